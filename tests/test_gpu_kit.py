"""The GPU kit on the CPU: packing within the limits, the data round trip, the device views against the CPU
recipe, a two-step run whose checkpoint exports to a model the app runs, the result transport and the
inference check."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from app.config import CONTRACT, InferenceConfig
from app.normalize import read_normalized
from app.runner import ModelRunner
from tests.training_data import write_dataset
from training.augment import Geometry, jitter, move_channels, stain_shift, view
from training.config import AugmentConfig, DataConfig, TargetConfig
from training.data import load_labels, prepare_sample, scan_pairs
from training.gpu_kit import env, gpu_augment, transport
from training.gpu_kit.__main__ import cli
from training.gpu_kit.infer_check import CheckOptions, check
from training.gpu_kit.layout import CARRIED, LAYOUT, MIB, Limits, pinned
from training.gpu_kit.pack import RESERVE_BYTES, SourceSpec, build_kit, fit_counts, kit_limit
from training.gpu_kit.pool import DevicePool, HostPool, read_sources, targets_of
from training.gpu_kit.run import planned_steps, resolve_start
from training.gpu_kit.store import read_archive
from training.gpu_kit.synthetic import folder_recipe
from training.model import ModelConfig, MT2Net
from training.synth.generate import generate_dataset
from training.synth.params import MODALITY_NAMES, SynthConfig

SYNTH_SEED, SYNTH_SIZE = 7, (64, 96)
TINY = ["--set", "model.decoder_channels=[8, 8, 8, 8, 8]", "--set", "augment.crop=64",
        "--set", "data.weights=[0.4, 0.3, 0.3]", "--set", "runtime.threads=1", "--batch", "2",
        "--unlabelled-batch", "2", "--workers", "1"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as the other training tests run: on a shared two-core machine two are slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> list[Path]:
    """Two small real-like folders (one with unlabelled images) and a small synthetic set."""
    root = tmp_path_factory.mktemp("kit-data")
    real_a = write_dataset(root / "real_a", labelled=3, unlabelled=0, size=72, seed=1)
    real_b = write_dataset(root / "real_b", labelled=2, unlabelled=1, size=80, seed=2)
    generate_dataset(root / "synth", 3, 1, SYNTH_SEED, SynthConfig(min_size=SYNTH_SIZE[0], max_size=SYNTH_SIZE[1]))
    return [real_a, real_b, root / "synth"]


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    """Stand-ins named like the pinned wheels (the packages are installed here, so nothing installs them)."""
    folder = tmp_path_factory.mktemp("wheels")
    for pin in pinned(list(CARRIED.values())):
        name, version = pin.split("==")
        (folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"wheel")
    return folder


def specs(folders: list[Path]) -> list[SourceSpec]:
    recipe = folder_recipe(folders[2], SYNTH_SEED, SYNTH_SIZE, MODALITY_NAMES)
    return [SourceSpec(folders[0]), SourceSpec(folders[1]), SourceSpec(folders[2], recipe)]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A tiny network's weights folder as `training export` writes them: fp32 (BatchNorms folded) and fp16."""
    from training.export import convert_fp16, export_fp32, slim

    folder = tmp_path_factory.mktemp("tiny-weights")
    torch.manual_seed(0)
    raw = export_fp32(MT2Net(ModelConfig(decoder_channels=(8, 8, 8, 8, 8))).eval(), folder / "raw.onnx")
    slim(raw, folder / CONTRACT.fp32_file)
    convert_fp16(folder / CONTRACT.fp32_file, folder / CONTRACT.fp16_file)
    raw.unlink()
    return folder


@pytest.fixture(scope="module")
def kit(folders, wheels, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("kit") / "kit"
    return out, build_kit(out, specs(folders), wheels_from=wheels, repo=None)


# --- packing -----------------------------------------------------------------------------------------------------


def test_kit_builds_within_its_limit(kit):
    out, manifest = kit
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size <= manifest["travel"]["kit_limit_bytes"] and size <= Limits().kit_mib * MIB
    assert [s["kind"] for s in manifest["sources"]] == ["packed", "packed", "synthetic"]
    assert [s["labelled"] for s in manifest["sources"]] == [3, 2, 3]
    assert manifest["sources"][1]["unlabelled"] == 1 and manifest["sources"][2]["recipe"]["seed"] == SYNTH_SEED
    assert sorted(p.name for p in (out / LAYOUT.wheels).iterdir()) == sorted(w["file"] for w in manifest["wheels"])
    assert json.loads((out / LAYOUT.manifest).read_text()) == manifest


def test_the_limit_leaves_out_images_of_the_largest_sources(kit, folders, wheels, tmp_path):
    # Every folder keeps the same share (at least one image), then the room left goes to the smallest share.
    assert fit_counts([[10] * 3], 100) == [3]
    assert fit_counts([[10] * 10, [50] * 4], 200) == [10, 2] and fit_counts([[10] * 10, [50] * 4], 130) == [8, 1]
    assert fit_counts([[10] * 10, [50] * 2], 150) == [10, 1]
    with pytest.raises(ValueError, match="fits"):
        fit_counts([[10] * 3, [10] * 2], 15)
    # What the working tree leaves of the transfer limit.
    assert kit_limit(Limits(kit_mib=48, travel_mib=64, margin_mib=1), 40 * MIB) == 23 * MIB
    # Room for about two thirds of the packed images besides the wheels and the reserve.
    packed = [s["bytes"] for s in kit[1]["sources"][:2]]
    room = Limits(kit_mib=(sum(packed) * 2 / 3 + sum(w["bytes"] for w in kit[1]["wheels"]) + RESERVE_BYTES) / MIB)
    manifest = build_kit(tmp_path / "kit", specs(folders)[:2], wheels_from=wheels, repo=None, limits=room)
    left = [len(s["left_out"]) for s in manifest["sources"]]
    assert left[0] > 0 and manifest["bytes"] <= room.kit_mib * MIB
    assert manifest["sources"][0]["labelled"] + left[0] == 3


def test_a_wrong_synthetic_recipe_is_refused(folders, wheels, tmp_path):
    wrong = folder_recipe(folders[2], SYNTH_SEED + 1, SYNTH_SIZE, MODALITY_NAMES)
    with pytest.raises(ValueError, match="differ from synth seed"):
        build_kit(tmp_path / "kit", [SourceSpec(folders[2], wrong)], wheels_from=wheels, repo=None)
    assert not (tmp_path / "kit").exists()


def test_packed_data_round_trips(kit, folders, tmp_path):
    out, manifest = kit
    norm, data, targets = InferenceConfig(), DataConfig(), TargetConfig()
    read = {name: entries for _, name, entries in read_sources(out, workers=2)}
    for folder in folders[:2]:
        entries = {e.name: e for e in read[folder.name]}
        pairs, _ = scan_pairs(folder)
        for sample in pairs:
            entry = entries[sample.name]
            cached = prepare_sample(sample, tmp_path / "cache", data, targets, norm, want_labels=True)
            assert np.array_equal(entry.image, np.load(cached.image))
            assert np.array_equal(entry.labels, np.load(cached.labels))
            assert np.array_equal(targets_of((entry.labels, targets, False))[0], np.load(cached.targets))
        unlabelled = [e for e in read[folder.name] if e.labels is None]
        for entry in unlabelled:
            assert np.array_equal(entry.image, read_normalized(folder / "unlabeled" / f"{entry.name}.png",
                                                               norm.max_pixels, norm))
    synth = folders[2]
    for entry in read[synth.name]:
        split = "images" if entry.labels is not None else "unlabeled"
        image = next((synth / split).glob(f"{entry.name}.*"))
        assert np.array_equal(entry.image, read_normalized(image, norm.max_pixels, norm))
        if entry.labels is not None:
            assert np.array_equal(entry.labels, load_labels(synth / "labels" / f"{entry.name}_label.tiff"))
    archive = out / manifest["sources"][0]["archive"]
    assert [e.name for e in read_archive(archive, [1])] == [read[folders[0].name][1].name]


# --- views on the device -------------------------------------------------------------------------------------


def small_pool(rng: np.random.Generator) -> tuple[DevicePool, list[np.ndarray], list[np.ndarray]]:
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(70, 90), (50, 40), (128, 100)]]
    maps = [rng.random((im.shape[0], im.shape[1], 3)).astype(np.float16) for im in images]
    for target in maps:
        target[..., 0] = np.round(target[..., 0] * 2)
    host = HostPool(["a", "b", "c"], [0, 0, 0], images, list(maps), [None] * 3, ["s"])
    return DevicePool.upload(host, torch.device("cpu")), images, maps


def test_device_views_match_the_cpu_recipe():
    rng = np.random.default_rng(0)
    pool, images, maps = small_pool(rng)
    crop, worst, wrong_classes = 32, 0.0, 0
    for _ in range(40):
        items = rng.integers(0, 3, 4)
        geoms = [Geometry(int(rng.integers(-20, 60)), int(rng.integers(-20, 60)), int(rng.integers(8, 100)),
                          bool(rng.random() < 0.5), bool(rng.random() < 0.5), int(rng.integers(0, 4))) for _ in items]
        plan = gpu_augment.CropPlan(items.astype(np.int64), *(np.array([getattr(g, f) for g in geoms]) for f in
                                                               ("y0", "x0", "size", "flip_y", "flip_x", "rot90")))
        got = gpu_augment.image_views(pool, plan, crop)
        cls, cell, boundary = gpu_augment.target_views(pool, plan, crop)
        for k, (i, geom) in enumerate(zip(items, geoms)):
            worst = max(worst, float((view(images[i], geom, crop) / 255.0 - got[k]).abs().max()))
            expected = view(maps[i][..., 1:], geom, crop).clamp(0.0, 1.0)
            worst = max(worst, float((expected - torch.cat([cell[k], boundary[k]])).abs().max()))
            wrong_classes += int((view(maps[i][..., :1], geom, crop, nearest=True)[0].round().long() != cls[k]).sum())
    assert worst < 1e-5 and wrong_classes == 0


class Replay:
    """A stand-in generator that hands the CPU recipe the values the batched draw made."""

    def __init__(self, *values) -> None:
        self.values = list(values)

    def random(self) -> float:
        return 0.0

    def uniform(self, *args):
        return self.values.pop(0)

    def integers(self, *args):
        return self.values.pop(0)


def test_device_photometry_matches_the_cpu_recipe():
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.random((4, 3, 40, 40)).astype(np.float32))
    images[1] = images[1, :1].expand(3, -1, -1)  # grey
    images[2, 0] = 0  # two signals
    images[3, :2] = 0  # one signal
    cfg = AugmentConfig(stain_p=1.0, stain_scale=0.1, stain_shift=0.1, channel_p=1.0)
    draw = gpu_augment.draw_photometric(np.random.default_rng(5), 4, cfg)
    stained, moved, jittered = (gpu_augment.stain_shift(images, draw), gpu_augment.move_channels(images, draw),
                                gpu_augment.jitter(images, draw))
    sigmas = np.array([0.0, 0.7, 1.5, 0.3])
    blurred = gpu_augment.blur(images, sigmas, 1.5)
    for k in range(4):
        replay = Replay(draw.stain_scale[k], draw.stain_shift[k])
        assert float((stain_shift(images[k], replay, cfg) - stained[k]).abs().max()) < 1e-5
        assert torch.equal(move_channels(images[k], Replay(int(draw.channels[k])), 1.0), moved[k])
        expected = jitter(images[k], Replay(draw.brightness[k], draw.contrast[k]), cfg)
        assert float((expected - jittered[k]).abs().max()) < 1e-6
        if sigmas[k] > 0:
            import torchvision.transforms.functional as TF

            size = 2 * max(1, int(np.ceil(3 * sigmas[k]))) + 1
            expected = TF.gaussian_blur(images[k], [size, size], [float(sigmas[k])] * 2)
            assert float((expected - blurred[k]).abs().max()) < 1e-5
    assert gpu_augment.single_signal(images).tolist() == [False, True, False, True]
    assert gpu_augment.stained(images).tolist() == [True, False, False, False]


# --- a run from the kit --------------------------------------------------------------------------------------


def test_two_step_run_writes_a_checkpoint_the_export_turns_into_a_model(kit, tiny_weights, tmp_path):
    from training.checkpoint import load_checkpoint
    from training.export import export_fp32_only

    out, _ = kit
    start = tiny_weights / CONTRACT.fp32_file
    result = CliRunner().invoke(cli, ["run", "--kit", str(out), "--out", str(tmp_path / "run"), "--minutes", "2",
                                      "--max-steps", "2", "--device", "cpu", "--init-onnx", str(start), *TINY])
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(tmp_path / "run" / "gpu.pt")
    assert ckpt["step"] == 2 and ckpt["teacher"] is not None and ckpt["init_onnx"]["file"] == start.name
    assert ckpt["schedule"] == {"step": 2, "total_steps": 2, "warmup_steps": 200}
    assert ckpt["config"]["schedule"]["batch_size"] == 2 and ckpt["config"]["runtime"]["channels_last"]
    curve = (tmp_path / "run" / "curve.csv").read_text().splitlines()
    assert curve[0].startswith("step,seconds,lr") and curve[-1].startswith("2,")
    summary = json.loads((tmp_path / "run" / "run.json").read_text())
    assert summary["steps"] == 2 and summary["stopped_by"] == "steps"
    manifest = export_fp32_only(tmp_path / "run" / "gpu.pt", tmp_path / "weights")
    assert json.loads(manifest.read_text())["checkpoint"]["step"] == 2
    cls, cell, boundary = ModelRunner(tmp_path / "weights" / CONTRACT.fp32_file, "cpu").run(
        np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32))
    assert cls.shape == (1, 3, 64, 64) and cell.shape == boundary.shape == (1, 1, 64, 64)


def test_run_plans_its_length_and_its_start(tmp_path):
    assert planned_steps(30, 0.1, 60.0, 1.0, 0) == 630
    assert planned_steps(30, 0.1, 60.0, 1.0, 100) == 100 and planned_steps(30, 0.1, -1.0, 1.0, 0) == 31
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "gpu.pt").write_bytes(b"x")
    assert resolve_start(None, tmp_path / "run") == (None, tmp_path / "run" / "gpu.pt")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / CONTRACT.fp32_file).write_bytes(b"x")
    assert resolve_start(None, tmp_path / "w") == (tmp_path / "w" / CONTRACT.fp32_file, None)
    with pytest.raises(ValueError, match="give one"):
        resolve_start(tmp_path / "a.onnx", tmp_path / "run")


# --- results, environment, inference check -------------------------------------------------------------------


def test_large_results_travel_in_parts(tmp_path):
    (tmp_path / "run").mkdir()
    payload = np.random.default_rng(0).bytes(2500)
    (tmp_path / "run" / "gpu.pt").write_bytes(payload)
    (tmp_path / "run" / "curve.csv").write_text("step\n1\n")
    written = transport.split_for_return(tmp_path / "run", tmp_path / "out", 1000)
    assert sorted(p.name for p in written) == ["curve.csv", "gpu.pt.part00", "gpu.pt.part01", "gpu.pt.part02",
                                               "gpu.pt.sha256"]
    assert transport.join_parts(tmp_path / "out") == [tmp_path / "out" / "gpu.pt"]
    assert (tmp_path / "out" / "gpu.pt").read_bytes() == payload
    (tmp_path / "out" / "gpu.pt.part01").write_bytes(b"damaged")
    with pytest.raises(ValueError, match="do not match"):
        transport.join_parts(tmp_path / "out")


def test_the_png_stand_in_decodes_what_pillow_can_and_refuses_the_rest():
    import imagecodecs

    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    assert np.array_equal(env.png_decode(buffer.getvalue()), rgb)
    with pytest.raises(ValueError, match="16-bit colour"):
        env.png_decode(imagecodecs.png_encode(rgb.astype(np.uint16) * 200))
    assert not env.stand_in_imagecodecs()  # imagecodecs is installed here: nothing to stand in for
    assert env.install_wheels(Path("no-kit")) == []  # the carried packages are installed here too


def test_the_stand_in_takes_the_place_of_a_missing_imagecodecs(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "imagecodecs", None)  # what an import of a missing package finds
    assert env.missing(["imagecodecs"]) == ["imagecodecs"]
    assert env.stand_in_imagecodecs()
    import imagecodecs

    assert imagecodecs.png_decode is env.png_decode


def test_inference_check_runs_on_the_cpu(kit, tiny_weights, tmp_path):
    options = CheckOptions(weights=tiny_weights, out=tmp_path / "out", device="cpu", sides=(96,), budget_s=120,
                           kit=kit[0], parity_sizes=((64, 64),), torch_window=64, torch_batch=1, torch_repeats=1,
                           torch_model=ModelConfig(decoder_channels=(8, 8, 8, 8, 8)))
    report = check(options)
    assert report["parity"]["providers"]["fp16"] == "CPUExecutionProvider" and report["parity"]["cases"]
    row = report["images"][0]
    assert row["status"] == "ok", row["message"]
    assert row["tolerance_s"] == 10.0 and 0 < row["wall_s"] and float(row["image_s"]) <= row["wall_s"]
    assert report["torch_model"]["windows_per_s"]["float32"] > 0
    assert json.loads((tmp_path / "out" / "infer.json").read_text())["images"][0]["side"] == 96
