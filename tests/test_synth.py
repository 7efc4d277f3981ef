"""Synthetic data: formats read back by the app, exact labels, determinism and the look of each modality."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import ndimage as ndi

from app.config import InferenceConfig
from app.metric import read_labels
from app.normalize import is_fluorescence, normalize, to_rgb
from app.reader import read_image
from training.synth import fields as F
from training.synth.formats import StorageFormat, pick_format, quantise
from training.synth.generate import generate_dataset, make_sample
from training.synth.layout import finalize, place_cells, tessellate
from training.synth.modalities import dic_shading
from training.synth.params import (
    BrightfieldParams,
    DicParams,
    PhaseParams,
    SynthConfig,
)
from training.synth.shapes import random_shape
from training.synth.writer import read_meta, write_image

MAX_PIXELS = 10**8
SMALL = SynthConfig(min_size=160, max_size=224)


def small(*names: str) -> SynthConfig:
    return SMALL.select(list(names))


def every_format() -> list[StorageFormat]:
    formats = {f for m in SynthConfig().modalities for f, _ in m.formats}
    return sorted(formats, key=lambda f: f.label)


def test_every_extension_bit_depth_and_layout_is_generated() -> None:
    formats = every_format()
    assert {f.ext for f in formats} >= {".png", ".bmp", ".jpg", ".tif", ".tiff"}
    assert {f.layout for f in formats} == {"gray", "rgb", "chw"}
    assert {f.dtype for f in formats} == {"uint8", "uint16"}
    with pytest.raises(ValueError):
        StorageFormat(".bmp", "uint16", "gray")
    with pytest.raises(ValueError):
        StorageFormat(".png", "uint8", "chw")


@pytest.mark.parametrize("fmt", every_format(), ids=lambda f: f.label)
def test_formats_read_back_by_the_app(tmp_path: Path, fmt: StorageFormat) -> None:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:48, 0:64] / 64.0
    gray = (0.2 + 0.6 * yy * xx).astype(np.float32)
    clean = gray if fmt.layout == "gray" else np.stack([np.zeros_like(gray), gray, 1.0 - gray], axis=2)
    stored = quantise(rng, clean, fmt)
    assert stored.dtype == np.dtype(fmt.dtype)
    expected = stored[:, :, None] if stored.ndim == 2 else stored
    if fmt.layout == "chw":
        expected = np.moveaxis(stored, 0, 2)
    for zlib in (False, True) if fmt.ext in (".tif", ".tiff") else (False,):
        path = tmp_path / f"img{int(zlib)}{fmt.ext}"
        write_image(path, stored, fmt, tiff_zlib=zlib)
        back = read_image(path, MAX_PIXELS)
        assert back.shape == expected.shape and back.dtype == expected.dtype
        if fmt.ext == ".jpg":
            assert np.abs(back.astype(int) - expected.astype(int)).mean() < 3.0
        else:
            np.testing.assert_array_equal(back, expected)


def test_dataset_layout_meta_and_exact_labels(tmp_path: Path) -> None:
    rows = generate_dataset(tmp_path, labelled=8, unlabelled=2, seed=11, cfg=SMALL)
    meta = read_meta(tmp_path / "meta.csv")
    assert [r["name"] for r in meta] == [r["name"] for r in rows]
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == [
        f"cell_{i:05d}_label.tiff" for i in range(1, 9)
    ]
    assert len(list((tmp_path / "unlabeled").iterdir())) == 2
    for row in meta:
        image = read_image(tmp_path / row["file"], MAX_PIXELS)
        assert image.shape[:2] == (row["height"], row["width"])
        if row["split"] != "labelled":
            continue
        labels = read_labels(tmp_path / "labels" / f"{row['name']}_label.tiff")
        assert labels.shape == image.shape[:2]
        assert_exact_instances(labels)
        assert int(labels.max()) == row["cells"] > 0


def test_flat_layout_is_a_folder_the_app_can_segment(tmp_path: Path) -> None:
    from app.reader import list_inputs

    generate_dataset(tmp_path, labelled=3, unlabelled=1, seed=4, cfg=SynthConfig(96, 128), flat=True)
    images, skipped = list_inputs(tmp_path)
    assert [p.stem for p in images] == ["cell_00001", "cell_00002", "cell_00003"]
    assert sorted(p.name for p in skipped) == ["labels", "unlabeled"]
    meta = read_meta(tmp_path / "labels" / "meta.csv")
    assert [r["file"] for r in meta[:3]] == [p.name for p in images]
    for row, path in zip(meta, images):
        assert int(read_labels(tmp_path / "labels" / f"{path.stem}_label.tiff").max()) == row["cells"]


def assert_exact_instances(labels: np.ndarray) -> None:
    """Ids are 1..N, each cell one 8-connected piece (no id shared by two separate cells)."""
    ids = np.unique(labels)
    n = int(labels.max())
    np.testing.assert_array_equal(ids[ids > 0], np.arange(1, n + 1))
    eight = np.ones((3, 3), dtype=bool)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        assert ndi.label(labels[sl] == i, structure=eight)[1] == 1


def touching_pairs(labels: np.ndarray) -> int:
    """Number of horizontally or vertically adjacent pixel pairs that belong to two different cells."""
    a, b = labels[:, :-1], labels[:, 1:]
    c, d = labels[:-1, :], labels[1:, :]
    return int(((a != b) & (a > 0) & (b > 0)).sum() + ((c != d) & (c > 0) & (d > 0)).sum())


def test_crowded_layouts_keep_touching_cells_distinct() -> None:
    rng = np.random.default_rng(0)
    shape = lambda: random_shape(rng, "irregular", 24.0)  # noqa: E731
    packed = finalize(place_cells(rng, (160, 160), "packed", shape, 24.0, 0.6, 0.2), 6)
    mono = finalize(tessellate(rng, (160, 160), 20.0), 6)
    for labels in (packed, mono):
        assert touching_pairs(labels) > 50
        assert_exact_instances(labels)
    sparse = finalize(place_cells(rng, (160, 160), "sparse", shape, 24.0, 0.3, 0.2), 6)
    assert touching_pairs(sparse) == 0
    assert sparse.max() > 5


def test_sparse_cells_keep_a_gap() -> None:
    rng = np.random.default_rng(1)
    labels = place_cells(rng, (128, 128), "sparse", lambda: random_shape(rng, "round", 16.0), 16.0, 0.4, 0.0)
    grown = ndi.grey_dilation(labels, size=(3, 3))
    assert not np.any((labels > 0) & (grown != labels))


@pytest.mark.parametrize("kind", ["round", "irregular", "ellipse", "rod", "bent", "lobed"])
def test_shapes_span_small_to_large_cells(kind: str) -> None:
    rng = np.random.default_rng(2)
    for diameter in (8.0, 100.0):
        mask = random_shape(rng, kind, diameter)
        assert mask.any()
        assert 0.55 * diameter <= max(mask.shape) <= 1.45 * diameter + 3


def test_irregular_and_bent_shapes_are_not_convex() -> None:
    from skimage.measure import regionprops

    rng = np.random.default_rng(4)
    for kind in ("irregular", "bent"):
        solidity = [regionprops(random_shape(rng, kind, 60.0).astype(int))[0].solidity for _ in range(20)]
        assert min(solidity) < 0.9


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    def digest(folder: Path) -> dict[str, str]:
        return {
            str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()
        }

    cfg = SynthConfig(min_size=96, max_size=128)
    generate_dataset(tmp_path / "a", 4, 2, seed=5, cfg=cfg)
    generate_dataset(tmp_path / "b", 4, 2, seed=5, cfg=cfg)
    generate_dataset(tmp_path / "c", 4, 2, seed=6, cfg=cfg)
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert a == b
    images = [k for k in a if k.startswith(("images", "unlabeled"))]
    assert all(a[k] != c.get(k) for k in images)


def test_image_does_not_depend_on_the_number_of_images(tmp_path: Path) -> None:
    cfg = SynthConfig(min_size=96, max_size=128)
    one = generate_dataset(tmp_path / "one", 1, 0, seed=9, cfg=cfg)
    three = generate_dataset(tmp_path / "three", 3, 2, seed=9, cfg=cfg)
    assert one[0] == three[0]
    first = one[0]["file"]
    assert (tmp_path / "one" / first).read_bytes() == (tmp_path / "three" / first).read_bytes()
    labelled, unlabelled = make_sample(9, "labelled", 0, cfg), make_sample(9, "unlabelled", 0, cfg)
    assert labelled.labels.shape != unlabelled.labels.shape or not np.array_equal(labelled.labels, unlabelled.labels)


def test_modality_proportions_follow_the_challenge() -> None:
    counts = {m: 0 for m in ("brightfield", "fluorescence", "phase", "dic")}
    cfg = SynthConfig(min_size=32, max_size=32)
    from training.synth.generate import choose_modality, sample_rng

    for i in range(2000):
        counts[choose_modality(sample_rng(0, "labelled", i), cfg).name] += 1
    assert abs(counts["brightfield"] / 2000 - 0.3) < 0.04
    assert abs(counts["fluorescence"] / 2000 - 0.3) < 0.04
    assert abs(counts["phase"] / 2000 - 0.2) < 0.04
    assert abs(counts["dic"] / 2000 - 0.2) < 0.04


def app_rgb(sample) -> np.ndarray:
    """The sample's stored image as the app sees it after reading: H×W×3 in the source dtype."""
    img = sample.image
    if sample.fmt.layout == "chw":
        img = np.moveaxis(img, 0, 2)
    return to_rgb(img)


def test_fluorescence_has_an_empty_red_channel_and_a_dark_background() -> None:
    cfg = small("fluorescence")
    bits, layouts = set(), set()
    recognised = 0
    for i in range(12):
        s = make_sample(21, "labelled", i, cfg)
        rgb = app_rgb(s)
        bits.add(rgb.dtype.itemsize)
        layouts.add(s.fmt.layout)
        if s.fmt.layout != "gray":  # one-channel images may also be stored as plain grayscale
            stored = np.moveaxis(s.image, 0, 2) if s.fmt.layout == "chw" else s.image
            assert not stored[..., 0].any()  # the file's red channel is empty
        # as the app reads it (one-signal images become grey: app.normalize.to_rgb), it is fluorescence, except
        # for confluent one-channel images whose median is bright (only fixed scales depend on it)
        recognised += is_fluorescence(normalize(rgb, InferenceConfig()), InferenceConfig())
        signal = rgb.astype(float).max(axis=2)
        assert np.median(signal[s.labels == 0]) < 0.5 * np.median(signal[s.labels > 0])
    assert bits == {1, 2}
    assert "rgb" in layouts
    assert recognised >= 9  # 9 of these 12: three are confluent cytoplasm images with a bright median


def test_only_one_channel_images_are_stored_as_grayscale() -> None:
    rng = np.random.default_rng(0)
    choices = ((StorageFormat(".png", "uint8", "gray"), 1.0), (StorageFormat(".png", "uint8", "rgb"), 1.0))
    one = np.zeros((8, 8, 3), np.float32)
    one[..., 2] = 0.5
    two = one.copy()
    two[..., 1] = 0.5
    assert {pick_format(rng, choices, two).layout for _ in range(30)} == {"rgb"}
    assert {pick_format(rng, choices, one).layout for _ in range(30)} == {"gray", "rgb"}
    np.testing.assert_array_equal(quantise(rng, one, choices[0][0]), np.full((8, 8), 128, np.uint8))
    with pytest.raises(ValueError):
        quantise(rng, two, choices[0][0])


def test_brightfield_light_background_and_unlabelled_unstained_lookalikes() -> None:
    flat = BrightfieldParams(vignetting=(0.0, 0.0), gradient=(0.0, 0.0))  # judge the specimen, not the lamp
    cfg = replace(small("brightfield"), modalities=(flat,))
    saw_lookalikes = False
    for i in range(10):
        s = make_sample(31, "labelled", i, cfg)
        gray = app_rgb(s).astype(float).mean(axis=2)
        gray = gray / np.percentile(gray, 99.5)  # 16-bit files rarely use their full range
        background = (s.labels == 0) & (s.lookalikes == 0)
        assert np.median(gray[background]) > 0.7
        assert not np.any((s.labels > 0) & (s.lookalikes > 0))
        if s.lookalikes.any():
            saw_lookalikes = True
            rgb = app_rgb(s).astype(float) + 1.0
            od = -np.log10(rgb / np.percentile(rgb, 99.5, axis=(0, 1))).max(axis=2)  # strongest absorption
            assert np.median(od[s.labels > 0]) > 1.5 * np.median(od[s.lookalikes > 0])
    assert saw_lookalikes


def test_phase_cells_have_bright_halos() -> None:
    cfg = replace(small("phase"), modalities=(PhaseParams(bright_fraction=(0.0, 0.0), debris=(0.0, 0.0)),))
    for i in range(4):
        s = make_sample(41, "labelled", i, cfg)
        gray = app_rgb(s).astype(float).mean(axis=2)
        outside = F.outer_distance(s.labels)
        halo = gray[(outside >= 1) & (outside <= 3)]
        far = gray[outside > 12]
        if far.size < 200:
            continue
        assert halo.mean() > far.mean()
        assert np.median(gray[s.labels > 0]) < np.median(far)


def test_dic_shading_is_antisymmetric() -> None:
    yy, xx = np.mgrid[0:64, 0:64]
    r = np.hypot(yy - 32, xx - 32)
    dome = np.sqrt(np.clip(1.0 - (r / 20.0) ** 2, 0.0, None)).astype(np.float32)
    for angle in (0.0, np.pi / 3):
        shade = dic_shading(dome, angle, 1.0)
        u = np.cos(angle) * (xx - 32) + np.sin(angle) * (yy - 32)
        lead, trail = shade[(u < -4) & (r < 20)], shade[(u > 4) & (r < 20)]
        assert lead.mean() > 0 > trail.mean()
        assert abs(lead.sum() + trail.sum()) < 0.05 * (abs(lead.sum()) + abs(trail.sum()))


def test_dic_images_have_relief_on_a_grey_background() -> None:
    cfg = replace(small("dic"), modalities=(DicParams(offset_contrast=(0.0, 0.0)),))
    s = make_sample(51, "labelled", 0, cfg)
    gray = app_rgb(s).astype(float).mean(axis=2)
    top = 65535.0 if s.image.dtype == np.uint16 else 255.0
    bg = np.median(gray[F.outer_distance(s.labels) > 6])
    assert 0.15 * top < bg < 0.8 * top
    diff = gray[s.labels > 0] - bg
    assert np.abs(diff).mean() > 4 * abs(diff.mean())


def test_sizes_and_modalities_are_configurable() -> None:
    cfg = SynthConfig(min_size=300, max_size=300).select(["dic"])
    s = make_sample(1, "labelled", 0, cfg)
    assert s.labels.shape == (300, 300) and s.modality == "dic"
    with pytest.raises(ValueError):
        SynthConfig().select(["xray"])


def test_synth_command_writes_the_challenge_layout(tmp_path: Path) -> None:
    from training.__main__ import cli

    out = tmp_path / "set"
    result = CliRunner().invoke(
        cli, ["synth", "--out", str(out), "--labelled", "3", "--unlabelled", "1", "--seed", "2",
              "--size", "96", "128", "--modalities", "fluorescence,phase"],
    )
    assert result.exit_code == 0, result.output
    meta = read_meta(out / "meta.csv")
    assert len(meta) == 4 and {r["modality"] for r in meta} <= {"fluorescence", "phase"}
    assert len(list((out / "labels").glob("*_label.tiff"))) == 3
    bad = CliRunner().invoke(cli, ["synth", "--out", str(out), "--modalities", "xray"])
    assert bad.exit_code != 0


def test_samples_folder_is_what_the_documented_command_makes(tmp_path: Path) -> None:
    """samples/ comes from `python -m training synth --out samples --labelled 8 --seed 12 --size 256 320 --flat`."""
    samples = Path(__file__).resolve().parents[1] / "samples"
    generate_dataset(tmp_path, labelled=8, unlabelled=0, seed=12, cfg=SynthConfig(256, 320), flat=True)
    assert read_meta(samples / "labels" / "meta.csv") == read_meta(tmp_path / "labels" / "meta.csv")
    for path in sorted((tmp_path / "labels").glob("*_label.tiff")):
        np.testing.assert_array_equal(read_labels(samples / "labels" / path.name), read_labels(path))
    assert sum(p.stat().st_size for p in samples.rglob("*") if p.is_file()) < 3_000_000
