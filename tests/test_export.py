"""Export: checkpoint -> verified fp32/fp16 ONNX + manifest, the checks catching broken models, the app using it.

The network under test has its heads fitted by least squares on disc images (encoder and decoder stay at
their random initialisation), so it finds real cells and the fp16-vs-fp32 instance-map check compares
non-empty maps. Fitting takes well under a second, unlike training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import tifffile
import torch
from click.testing import CliRunner
from onnx import numpy_helper
from scipy import ndimage

from app.config import CONTRACT, InferenceConfig
from app.errors import ModelError
from app.manifest import sha256_file, verify_model
from app.postprocess import instance_map
from app.runner import INT8_FILE
from tests.onnx_models import labelled_disc_folder
from training.checkpoint import network_from_checkpoint
from training.config import load_config
from training.export import convert_fp16, export_fp32, parse_sizes, portable_config
from training.model import ModelConfig, MT2Net
from training.parity import (
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    ExportCheckError,
    cell_like_inputs,
    instance_agreement,
    verify,
)

SIZES = "128,96x160"
TEST_SIZES = ((128, 128), (96, 160))


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def disc_scene(size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """RGB float image of bright discs, its cell and boundary targets, and the number of discs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    discs: list[tuple[float, float, float]] = []
    for _ in range(200):  # non-overlapping discs, a few pixels apart, by rejection
        r = rng.uniform(10, 14)
        cy, cx = rng.uniform(r + 3, size - r - 3, 2)
        if all((cy - y) ** 2 + (cx - x) ** 2 > (r + q + 3) ** 2 for y, x, q in discs):
            discs.append((cy, cx, r))
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = len(discs)
        if len(discs) == 5:
            break
    depth = np.zeros((size, size))
    for k in range(1, labels.max() + 1):
        inside = labels == k
        d = ndimage.distance_transform_edt(inside)
        depth[inside] = d[inside] / max(d.max(), 1.0)
    cell = np.clip(depth / 0.4, 0, 1)
    boundary = ((labels > 0) & (depth < 0.15)).astype(np.float64)
    image = np.zeros((3, size, size), np.float32)
    image[1] = 0.8 * (labels > 0) * (0.7 + 0.3 * depth)
    image[2] = 0.5 * image[1]
    return image, cell, boundary, int(labels.max())


def fit_heads(net: MT2Net, size: int = 96, count: int = 4) -> MT2Net:
    """Least-squares fit of the cell and boundary heads (3x3 convs) to disc targets on fixed features."""
    scenes = [disc_scene(size, seed) for seed in range(count)]
    x = torch.from_numpy(np.stack([s[0] for s in scenes]))
    with torch.no_grad():
        feature = net.decoder(net.encoder(x))
        cols = torch.nn.functional.unfold(feature, 3, padding=1).permute(0, 2, 1).reshape(-1, feature.shape[1] * 9)
        a = torch.cat([cols.double(), torch.ones(len(cols), 1, dtype=torch.float64)], 1)
        gram = a.T @ a + 1e-3 * torch.eye(a.shape[1], dtype=torch.float64)
        for name, k in (("cell", 1), ("boundary", 2)):
            target = torch.from_numpy(np.stack([s[k] for s in scenes])).clamp(0.02, 0.98).logit().reshape(-1)
            w = torch.linalg.solve(gram, a.T @ target)
            conv = net.heads[name][0]
            conv.weight.copy_(w[:-1].reshape(conv.weight.shape).float())
            conv.bias.copy_(w[-1:].float())
    return net.eval()


def save_checkpoint(path: Path, config: ModelConfig, teacher: MT2Net | None, student: MT2Net, preset: str) -> Path:
    torch.save(
        {
            "student": student.state_dict(),
            "teacher": teacher.state_dict() if teacher is not None else None,
            "model_config": {"encoder": config.encoder, "decoder_channels": list(config.decoder_channels),
                             "encoder_depth": config.encoder_depth},
            "preset": preset,
            "config": {"preset": preset},
            "epoch": 7,
            "step": 70,
            "metrics": {"val_f1": 0.5, "best_val_f1": 0.55},
            "data": {"images": 4, "source": "discs"},
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def ship_net() -> MT2Net:
    torch.manual_seed(0)
    return fit_heads(MT2Net(load_config("ship").model).eval())


@pytest.fixture(scope="module")
def exported(tmp_path_factory, ship_net):
    """The shipped preset's architecture exported through the command line, as the lead would run it."""
    from training.__main__ import cli

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(1)
    student = MT2Net(ship_net.config).eval()
    ckpt = save_checkpoint(root / "run.pt", ship_net.config, ship_net, student, "ship")
    out = root / "weights"
    result = CliRunner().invoke(
        cli, ["export", "--checkpoint", str(ckpt), "--out", str(out), "--sizes", SIZES, "--threads", "1"]
    )
    assert result.exit_code == 0, result.output
    return out, ckpt, result.output


def test_export_writes_both_models_and_a_complete_manifest(exported) -> None:
    out, ckpt, output = exported
    manifest = json.loads((out / CONTRACT.manifest_file).read_text())
    for name, precision in ((CONTRACT.fp32_file, "fp32"), (CONTRACT.fp16_file, "fp16")):
        entry = manifest["files"][name]
        assert entry["size"] == (out / name).stat().st_size < 30_000_000  # shipped preset fits in git
        assert entry["sha256"] == sha256_file(out / name)
        assert entry["precision"] == precision
        assert verify_model(out / name)["sha256"] == entry["sha256"]
    assert manifest["architecture"]["encoder"] == "mobilenet_v2"
    assert manifest["preset"] == "ship"
    assert manifest["weights"] == "teacher"
    assert manifest["data"] == {"images": 4, "source": "discs"}
    assert manifest["validation_metrics"]["best_val_f1"] == 0.55
    assert manifest["checkpoint"]["sha256"] == sha256_file(ckpt)
    versions = manifest["export"]["versions"]
    assert {"torch", "onnx", "onnxconverter-common", "segmentation-models-pytorch", "mt2-app"} <= set(versions)
    parity = manifest["parity"]
    assert parity["fp32_vs_torch"] <= FP32_TOLERANCE
    assert parity["fp16_vs_fp32"] <= FP16_TOLERANCE
    assert parity["fp16_instance_f1"] >= 0.99
    assert parity["cells_compared"] > 0  # the instance check compared real cells
    assert {c["input"] for c in parity["cases"]} == {"random 128x128", "cells 128x128", "random 96x160", "cells 96x160"}
    assert "parity: fp32 vs PyTorch" in output and "mt2.fp16.onnx:" in output
    assert not list(out.glob(".export-*"))  # staging folder removed


def test_export_without_calibration_images_leaves_int8_out(exported) -> None:
    """The test checkpoint records no training sources: the int8 file is refused with a notice, the rest lands."""
    out, _, output = exported
    manifest = json.loads((out / CONTRACT.manifest_file).read_text())
    assert INT8_FILE not in manifest["files"] and not (out / INT8_FILE).exists()
    assert manifest["quantization"]["written"] is False
    assert "no calibration folders" in manifest["quantization"]["reason"]
    assert "int8 file not written: no calibration folders" in output
    assert any(note.startswith("int8 file not written") for note in manifest["export"]["notices"])


def test_export_writes_int8_and_refuses_it_when_its_parity_fails(ship_net, tmp_path) -> None:
    """With training images the export adds a verified int8 file; with an impossible F1 limit it leaves the int8
    file out (and removes the previous one, made from the weights it replaces) while fp32 and fp16 still land."""
    from training.export import export_checkpoint, verify_directory
    from training.quantize import QuantSettings

    ckpt = save_checkpoint(tmp_path / "run.pt", ship_net.config, ship_net, ship_net, "ship")
    calibration = [labelled_disc_folder(tmp_path / "discs", 2, (96, 96), [(30, 30), (62, 64)], 12)]
    out = tmp_path / "weights"
    quick = {"sizes": ((64, 64),), "threads": 1, "calibration": calibration,
             "quant": QuantSettings(crops=2, crop_size=64)}
    result = export_checkpoint(ckpt, out, **quick)
    assert result.int8 is not None and set(result.files) == {CONTRACT.fp32_file, CONTRACT.fp16_file, INT8_FILE}
    manifest = json.loads(result.manifest.read_text())
    assert manifest["files"][INT8_FILE]["precision"] == "int8"
    assert verify_model(out / INT8_FILE) is not None
    assert manifest["parity"]["int8"]["int8_instance_f1"] == result.int8.int8_instance_f1 >= 0.85
    assert manifest["quantization"]["calibration_sources"] == ["discs"]
    _, recheck = verify_directory(ckpt, out, sizes=((64, 64),), threads=1)  # --verify-only checks int8 too
    assert recheck is not None and recheck.int8_instance_f1 == result.int8.int8_instance_f1

    refused = export_checkpoint(ckpt, out, **quick, int8_min_f1=1.01)
    assert refused.int8 is None and set(refused.files) == {CONTRACT.fp32_file, CONTRACT.fp16_file}
    manifest = json.loads(refused.manifest.read_text())
    assert INT8_FILE not in manifest["files"] and not (out / INT8_FILE).exists()
    assert "'int8 vs fp32 instance-map F1' failed" in manifest["quantization"]["reason"]
    assert any("int8 file not written" in note for note in refused.notices)
    assert verify_model(out / CONTRACT.fp16_file) is not None


def test_exported_graphs_follow_the_contract(exported) -> None:
    out, _, _ = exported
    for name in (CONTRACT.fp32_file, CONTRACT.fp16_file):
        model = onnx.load(str(out / name))
        onnx.checker.check_model(model)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        graph = model.graph
        assert [i.name for i in graph.input] == [CONTRACT.input_name]
        assert [o.name for o in graph.output] == list(CONTRACT.output_names)
        for value in [*graph.input, *graph.output]:
            assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp16 keeps float32 IO
            dims = value.type.tensor_type.shape.dim
            assert [dims[i].dim_param != "" for i in (0, 2, 3)] == [True] * 3  # dynamic N, H, W
    fp16 = onnx.load(str(out / CONTRACT.fp16_file))
    kinds = {init.data_type for init in fp16.graph.initializer if len(init.dims) == 4}
    assert kinds == {onnx.TensorProto.FLOAT16}  # conv weights really are half precision


def test_exported_model_runs_at_any_batch_and_window(exported) -> None:
    from app.runner import ModelRunner

    out, _, _ = exported
    runner = ModelRunner(out / CONTRACT.fp32_file, device="cpu", threads=1)
    batch = np.random.default_rng(0).random((3, 3, 64, 96), dtype=np.float32)
    cls, cell, boundary = runner.run(batch)
    assert cls.shape == (3, 3, 64, 96) and cell.shape == boundary.shape == (3, 1, 64, 96)
    assert np.allclose(cls.sum(axis=1), 1, atol=1e-5)


def test_fitted_network_segments_discs(ship_net) -> None:
    """Sanity check of the test network itself: the instance check is about real cells."""
    image, _, _, n = disc_scene(128, seed=11)
    with torch.no_grad():
        out = ship_net(torch.from_numpy(image[None]))
    labels = instance_map(out["cell"].sigmoid()[0, 0].numpy(), out["boundary"].sigmoid()[0, 0].numpy(),
                          InferenceConfig())
    assert labels.max() == n == 5


def test_corrupted_fp16_weight_fails_the_fp16_check(exported, ship_net, tmp_path) -> None:
    out, _, _ = exported
    model = onnx.load(str(out / CONTRACT.fp16_file))
    for init in model.graph.initializer:  # the cell head's bias: shifts every cell probability
        if init.data_type == onnx.TensorProto.FLOAT16 and list(init.dims) == [1]:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float16(2.0), init.name))
    broken = tmp_path / CONTRACT.fp16_file
    onnx.save(model, str(broken))
    with pytest.raises(ExportCheckError, match="'fp16 vs fp32 max abs diff' failed: measured") as err:
        verify(ship_net, out / CONTRACT.fp32_file, broken, ((64, 64),), threads=1)
    assert err.value.measured > FP16_TOLERANCE


def test_fp32_file_of_another_network_fails_the_fp32_check(exported, tmp_path) -> None:
    out, _, _ = exported
    torch.manual_seed(5)
    other = MT2Net(load_config("ship").model).eval()
    with pytest.raises(ExportCheckError, match="'fp32 ONNX vs PyTorch max abs diff' failed"):
        verify(other, out / CONTRACT.fp32_file, out / CONTRACT.fp16_file, ((64, 64),), threads=1)


class OutOfRangeNet(torch.nn.Module):
    """A brightness detector whose convolution weights (1e5, scaled back by 1e-4) exceed the fp16 range: the
    converter clips them to 1e4, which changes the detector, so the fp16 model disagrees with the fp32 one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1e5)
            self.conv.bias.fill_(-1.5e5)  # cell where the channel sum exceeds 1.5

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        cell = self.conv(x) * 1e-4
        return {"cls": torch.cat([-cell, cell, 0 * cell], 1), "cell": cell, "boundary": 0 * cell - 10}


def test_network_outside_the_fp16_range_fails(tmp_path) -> None:
    net = OutOfRangeNet().eval()
    fp32 = export_fp32(net, tmp_path / CONTRACT.fp32_file)
    fp16 = tmp_path / CONTRACT.fp16_file
    assert convert_fp16(fp32, fp16) == {"small": 0, "large": 2}  # weight and bias clipped to +-1e4
    with pytest.raises(ExportCheckError, match="'fp16 vs fp32 max abs diff' failed: measured") as err:
        verify(net, fp32, fp16, ((64, 64),), threads=1)
    assert err.value.measured > 0.1


def test_instance_check_catches_a_split_cell() -> None:
    """Probabilities within 1e-2 can still cut a cell in two; the instance-map check must see it."""
    _, cell, boundary, n = disc_scene(128, seed=3)
    reference = (None, cell[None, None].astype(np.float32), boundary[None, None].astype(np.float32))
    labels = instance_map(reference[1][0, 0], reference[2][0, 0], InferenceConfig())
    split = reference[2].copy()
    ys, xs = np.nonzero(labels == 1)
    split[0, 0, ys.min() : ys.max() + 1, int(xs.mean()) - 1 : int(xs.mean()) + 2] = 1.0  # a wall through cell 1
    f1, cells = instance_agreement(reference, (None, reference[1], split), InferenceConfig())
    assert cells == labels.max() >= n - 1
    assert f1 < 0.99
    assert instance_agreement(reference, reference, InferenceConfig()) == (1.0, cells)


def test_tampered_weights_are_refused(exported, tmp_path) -> None:
    from app.__main__ import cli as app_cli
    from training.__main__ import cli as training_cli

    out, ckpt, _ = exported
    copy = tmp_path / "weights"
    shutil.copytree(out, copy)
    data = bytearray((copy / CONTRACT.fp32_file).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / CONTRACT.fp32_file).write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"^mt2\.fp32\.onnx: model file changed"):
        verify_model(copy / CONTRACT.fp32_file)
    (copy / CONTRACT.fp16_file).write_bytes((out / CONTRACT.fp16_file).read_bytes()[:-100])
    with pytest.raises(ModelError, match=r"^mt2\.fp16\.onnx: truncated model file"):
        verify_model(copy / CONTRACT.fp16_file)

    images = tmp_path / "in"
    images.mkdir()
    tifffile.imwrite(images / "a.tif", np.zeros((64, 64), np.uint8))
    runner = CliRunner()
    app_run = runner.invoke(
        app_cli, ["predict", "--input", str(images), "--output", str(tmp_path / "o"), "--model",
                  str(copy / CONTRACT.fp32_file), "--device", "cpu"]
    )
    assert app_run.exit_code == 2
    assert "mt2.fp32.onnx: model file changed" in app_run.output
    recheck = runner.invoke(training_cli, ["export", "--checkpoint", str(ckpt), "--out", str(copy), "--verify-only"])
    assert recheck.exit_code != 0 and "model file changed" in recheck.output


def test_verify_only_fails_loudly_on_a_model_that_drifted(exported, tmp_path) -> None:
    """A re-documented (manifest matches) but wrong fp16 file: exit non-zero naming the check and the value."""
    from app.manifest import write_manifest
    from training.__main__ import cli

    out, ckpt, _ = exported
    copy = tmp_path / "weights"
    shutil.copytree(out, copy)
    model = onnx.load(str(copy / CONTRACT.fp16_file))
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT16 and list(init.dims) == [1]:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) - np.float16(3.0), init.name))
    onnx.save(model, str(copy / CONTRACT.fp16_file))
    write_manifest(copy, [CONTRACT.fp32_file, CONTRACT.fp16_file])
    result = CliRunner().invoke(
        cli, ["export", "--checkpoint", str(ckpt), "--out", str(copy), "--verify-only", "--sizes", "64",
              "--threads", "1"]
    )
    assert result.exit_code == 1
    assert "export check 'fp16 vs fp32 max abs diff' failed: measured" in result.output


def test_verify_only_passes_on_untouched_files(exported) -> None:
    from training.__main__ import cli

    out, ckpt, _ = exported
    result = CliRunner().invoke(
        cli, ["export", "--checkpoint", str(ckpt), "--out", str(out), "--verify-only", "--sizes", "64",
              "--threads", "1"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"verified {out}: fp32 vs PyTorch")


def test_app_runs_the_exported_fp32_model(exported, tmp_path) -> None:
    """python -m app predict on the exported weights folder: one label file per image, discs found."""
    from app.__main__ import cli

    out, _, _ = exported
    image, _, _, n = disc_scene(160, seed=21)
    images = tmp_path / "in"
    images.mkdir()
    rgb = (np.moveaxis(image, 0, -1) * 255).astype(np.uint8)
    tifffile.imwrite(images / "discs.tif", rgb)
    result = CliRunner().invoke(
        cli, ["predict", "--input", str(images), "--output", str(tmp_path / "out"), "--model", str(out),
              "--device", "cpu", "--threads", "1", "--scales", "1", "--mode", "accurate"]
    )
    assert result.exit_code == 0, result.output
    labels = tifffile.imread(tmp_path / "out" / "discs_label.tiff")
    assert labels.shape == (160, 160)
    assert labels.max() >= 1  # the shipped-architecture network found cells through the whole app


def test_teacher_fallback_and_student_choice(ship_net, tmp_path) -> None:
    torch.manual_seed(2)
    student = MT2Net(ship_net.config).eval()
    ckpt = torch.load(save_checkpoint(tmp_path / "s.pt", ship_net.config, None, student, "ship"), weights_only=False)
    net, used, notice = network_from_checkpoint(ckpt, "teacher")
    assert used == "student" and "no teacher" in notice
    assert torch.equal(net.heads["cell"][0].weight, student.heads["cell"][0].weight)
    ckpt["teacher"] = ship_net.state_dict()
    net, used, notice = network_from_checkpoint(ckpt, "student")
    assert (used, notice) == ("student", None)
    net, used, _ = network_from_checkpoint(ckpt)
    assert used == "teacher" and torch.equal(net.heads["cell"][0].bias, ship_net.heads["cell"][0].bias)


def test_unfit_checkpoint_fails_clearly_and_leaves_existing_weights_alone(tmp_path) -> None:
    from training.__main__ import cli

    out = tmp_path / "weights"
    out.mkdir()
    (out / CONTRACT.fp32_file).write_bytes(b"previous good model")
    bad = tmp_path / "bad.pt"
    torch.save({"student": {}, "teacher": None, "model_config": {"encoder": "mobilenet_v2"}}, bad)
    result = CliRunner().invoke(cli, ["export", "--checkpoint", str(bad), "--out", str(out)])
    assert result.exit_code != 0
    assert "student weights do not fit the checkpoint's model_config" in result.output
    assert (out / CONTRACT.fp32_file).read_bytes() == b"previous good model"


def test_parse_sizes() -> None:
    assert parse_sizes("256, 320x448") == ((256, 256), (320, 448))
    with pytest.raises(ValueError, match="multiples of 32"):
        parse_sizes("100")


def test_manifest_records_no_path_of_the_training_machine() -> None:
    config = {"data": {"cache_dir": "/home/someone/runs/ship/cache", "val_dir": "val", "seed": 0}, "preset": "ship"}
    assert portable_config(config) == {"data": {"cache_dir": "cache", "val_dir": "val", "seed": 0}, "preset": "ship"}
    assert portable_config(None) is None


def test_cell_like_inputs_look_like_microscopy() -> None:
    batch = cell_like_inputs(96, 128, seed=0)
    assert batch.shape == (3, 3, 96, 128) and batch.dtype == np.float32
    assert batch.min() >= 0 and batch.max() <= 1
    assert np.all(batch[0, 0] == 0)  # fluorescence: empty red channel
    assert np.allclose(batch * 255, np.round(batch * 255), atol=1e-3)  # uint8 steps, like the app's input


@pytest.mark.slow
def test_paper_preset_exports_and_verifies(tmp_path) -> None:
    from training.export import export_checkpoint

    config = load_config("paper").model
    assert config.encoder == "resnet50"
    torch.manual_seed(0)
    net = MT2Net(config).eval()
    ckpt = save_checkpoint(tmp_path / "paper.pt", config, net, net, "paper")
    del net
    result = export_checkpoint(ckpt, tmp_path / "w", sizes=((64, 64),), threads=1)
    assert result.parity.fp32_vs_torch <= FP32_TOLERANCE
    assert result.parity.fp16_vs_fp32 <= FP16_TOLERANCE
    manifest = json.loads(result.manifest.read_text())
    assert manifest["architecture"]["encoder"] == "resnet50"
    assert manifest["preset"] == "paper"
    assert result.files[CONTRACT.fp16_file] < 0.6 * result.files[CONTRACT.fp32_file]
