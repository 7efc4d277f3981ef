"""Grouped splits: neighbouring tiles of one field and near-duplicates never straddle two parts."""

from __future__ import annotations

import csv
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

from training.split import assign_groups, group_images, write_split


def field(seed: int, size: int = 192) -> np.ndarray:
    """A textured grey field (smooth blobs plus noise), 0..255 float32."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    base = gaussian_filter(rng.normal(0, 1, (size, size)), 3)
    base = (base - base.min()) / (base.max() - base.min()) * 200 + 20
    return base.astype(np.float32)


def test_tiles_of_one_field_form_one_group_and_other_fields_their_own() -> None:
    big = field(0)
    tiles = [big[y:y + 64, x:x + 64] for y in (0, 64, 128) for x in (0, 64, 128)]
    others = [field(s)[:64, :64] for s in (1, 2, 3)]
    groups = group_images(tiles + others)
    assert len(set(groups[:9])) == 1
    assert len(set(groups[9:])) == 3 and not set(groups[9:]) & set(groups[:9])


def test_near_duplicates_are_grouped_but_sizes_never_mix() -> None:
    a = field(4)[:96, :96]
    shifted = np.roll(a, 1, axis=1) + 3  # the same field again, a pixel over and brighter
    other_size = field(4)[:96, :80]
    groups = group_images([a, shifted, other_size])
    assert groups[0] == groups[1] != groups[2]


def test_assign_keeps_groups_whole_and_reaches_the_fractions() -> None:
    groups = np.repeat(np.arange(20), 5)  # 20 groups of 5 images
    parts = assign_groups(groups, {"val": 0.2, "tune": 0.1}, seed=3)
    for g in range(20):
        assert len({parts[i] for i in np.nonzero(groups == g)[0]}) == 1
    assert parts.count("val") == 20 and parts.count("tune") == 10 and parts.count("train") == 70
    assert parts == assign_groups(groups, {"val": 0.2, "tune": 0.1}, seed=3)


def test_write_split_links_files_and_lists_groups(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "images").mkdir(parents=True)
    (source / "labels").mkdir()
    for i in range(6):
        iio.imwrite(source / "images" / f"im{i}.png", field(10 + i)[:48, :48].astype(np.uint8))
        tifffile.imwrite(source / "labels" / f"im{i}_label.tiff", np.ones((48, 48), np.uint16))
    (source / "images" / "broken.png").write_bytes(b"not an image")
    tifffile.imwrite(source / "labels" / "broken_label.tiff", np.ones((48, 48), np.uint16))
    rows = write_split([source], tmp_path / "out", val=0.33, tune=0.16, seed=0)
    parts = [r["part"] for r in rows]
    assert parts.count("skipped") == 1 and "broken.png" in [r for r in rows if r["part"] == "skipped"][0]["image"]
    assert parts.count("val") == 2 and parts.count("tune") == 1 and parts.count("train") == 3
    for row in rows:
        if row["part"] != "skipped":
            image = tmp_path / "out" / row["part"] / "src" / "images" / row["image"]
            assert image.is_symlink() and image.resolve() == (source / "images" / row["image"]).resolve()
            assert (image.parent.parent / "labels" / (row["image"][:-4] + "_label.tiff")).exists()
    with open(tmp_path / "out" / "groups.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 7
