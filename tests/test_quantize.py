"""training.quantize: calibration crops from training images only, a valid QDQ int8 model that meets the contract,
parity-gated writing, and `python -m training quantize` on an existing weights folder."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import app.runner as runner_mod
from app.config import CONTRACT
from app.manifest import sha256_file, verify_model, write_manifest
from app.runner import INT8_FILE, ModelRunner, resolve_model
from tests.onnx_models import contract_model, disc_image, labelled_disc_folder
from training.config import DataConfig
from training.data import split_dataset
from training.parity import ExportCheckError
from training.quantize import (
    MANIFEST_KEY,
    CalibrationError,
    QuantSettings,
    build_int8,
    calibration_crops,
    calibration_images,
    quantize_weights,
)

SETTINGS = QuantSettings(crops=4, crop_size=64)
SIZES = ((64, 64),)
IMPOSSIBLE_F1 = 1.01  # no model reaches it: forces the parity refusal


@pytest.fixture
def source(tmp_path):
    """A training source in the challenge layout: 8 images of bright discs with labels."""
    return labelled_disc_folder(tmp_path / "discs", 8, (96, 96), [(30, 30), (62, 64)], 12)


def image_list(source):
    return sorted((source / "images").iterdir())


def test_calibration_images_leave_the_validation_split_out(source, tmp_path) -> None:
    data = DataConfig(val_fraction=0.25, seed=0)
    validation = {sample.image for sample in split_dataset(source, data).validation}
    images = calibration_images(source, data)
    assert len(validation) == 2 and len(images) == 6
    assert not validation & set(images)
    assert calibration_images(source, None) == image_list(source)  # no training config: every image
    plain = tmp_path / "plain"
    plain.mkdir()
    iio.imwrite(plain / "a.png", disc_image((40, 50), [(20, 25)], 10))
    assert calibration_images(plain, data) == [plain / "a.png"]  # a plain folder is used whole


def test_calibration_crops_follow_the_contract_and_the_seed(source, tmp_path) -> None:
    small = tmp_path / "small.png"
    iio.imwrite(small, disc_image((40, 50), [(20, 25)], 10))
    settings = QuantSettings(crops=5, crop_size=64)
    crops = calibration_crops([image_list(source), [small]], settings)
    assert crops.shape == (5, 3, 64, 64) and crops.dtype == np.float32
    assert crops.min() >= 0 and crops.max() <= 1 and crops.max() > 0.5  # the discs, scaled to [0, 1]
    assert np.all(crops[1, :, 40:] == 0) and np.all(crops[1, :, :, 50:] == 0)  # the small source, zero-padded
    assert crops[1].any()
    np.testing.assert_array_equal(crops, calibration_crops([image_list(source), [small]], settings))
    other = calibration_crops([image_list(source), [small]], QuantSettings(crops=5, crop_size=64, seed=1))
    assert not np.array_equal(crops, other)
    with pytest.raises(CalibrationError):
        calibration_crops([[]], settings)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="calibration method must be one of minmax, percentile, entropy"):
        QuantSettings(method="mse")
    with pytest.raises(ValueError, match="multiple of 32"):
        QuantSettings(crop_size=100)


def test_quantized_model_is_a_valid_qdq_model_that_meets_the_contract(source, tmp_path, monkeypatch) -> None:
    fp32 = contract_model(tmp_path / "model" / CONTRACT.fp32_file, kernel=3)
    out = tmp_path / "out"
    out.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    parity = build_int8(fp32, out / INT8_FILE, [image_list(source)], SETTINGS, SIZES, threads=1)
    assert list(cwd.iterdir()) == [] and list(out.iterdir()) == [out / INT8_FILE]  # no scratch file anywhere
    model = onnx.load(str(out / INT8_FILE))
    onnx.checker.check_model(model, full_check=True)
    ops = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    conv_weights = [init for init in model.graph.initializer if len(init.dims) == 4]
    assert conv_weights and all(init.data_type == onnx.TensorProto.INT8 for init in conv_weights)
    runner = ModelRunner(out / INT8_FILE, "cpu", threads=1)  # the app's contract check passes
    assert runner.precision == "int8" and runner.dtype == np.float32
    cls, cell, boundary = runner.run(np.random.default_rng(0).random((2, 3, 64, 96), dtype=np.float32))
    assert cls.shape == (2, 3, 64, 96) and cell.shape == boundary.shape == (2, 1, 64, 96)
    assert parity.int8_instance_f1 >= parity.min_instance_f1 and parity.cells_compared > 0
    assert 0 < parity.int8_mean_abs_diff <= parity.int8_vs_fp32 < 0.5
    assert [case["input"] for case in parity.cases] == ["random 64x64", "cells 64x64"]


def test_int8_refused_when_its_parity_fails(source, tmp_path) -> None:
    fp32 = contract_model(tmp_path / CONTRACT.fp32_file, kernel=3)
    dst = tmp_path / "out" / INT8_FILE
    dst.parent.mkdir()
    with pytest.raises(ExportCheckError, match="'int8 vs fp32 instance-map F1' failed: measured .*limit 1.01"):
        build_int8(fp32, dst, [image_list(source)], SETTINGS, SIZES, threads=1, min_f1=IMPOSSIBLE_F1)
    assert not dst.exists()


@pytest.fixture
def weights(tmp_path, source):
    """An exported-looking weights folder whose manifest records `source` as training data (a quarter held out)."""
    folder = tmp_path / "weights"
    contract_model(folder / CONTRACT.fp32_file, kernel=3)
    contract_model(folder / CONTRACT.fp16_file, kernel=3, fp16=True)
    meta = {
        "training": {"config": {"data": {"sources": [str(source)], "val_fraction": 0.25}}},
        "parity": {"limits": {"fp16_instance_f1": 0.99}, "fp16_vs_fp32": 1e-3},
    }
    write_manifest(folder, [CONTRACT.fp32_file, CONTRACT.fp16_file], meta)
    return folder


def test_quantize_command_adds_int8_to_the_weights_and_the_app_takes_it(weights, source, monkeypatch) -> None:
    from training.__main__ import cli

    result = CliRunner().invoke(cli, ["quantize", "--weights", str(weights), "--sizes", "64", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert f"wrote {INT8_FILE}" in result.output and "int8 instance F1" in result.output
    manifest = json.loads((weights / CONTRACT.manifest_file).read_text())
    entry = manifest["files"][INT8_FILE]
    assert (entry["precision"], entry["for"], entry["sha256"]) == ("int8", "CPU", sha256_file(weights / INT8_FILE))
    assert verify_model(weights / INT8_FILE) is not None
    assert manifest["parity"]["fp16_vs_fp32"] == 1e-3  # what the export recorded stays
    assert manifest["parity"]["limits"] == {"fp16_instance_f1": 0.99, "int8_instance_f1": 0.85}
    assert {"int8_vs_fp32", "int8_instance_f1", "cells_compared", "cases"} <= set(manifest["parity"]["int8"])
    record = manifest[MANIFEST_KEY]
    assert record["written"] and (record["method"], record["activations"]) == (SETTINGS.method, SETTINGS.activations)
    assert record["calibration_sources"] == [source.name] and record["calibration_images"] == 6  # no validation
    assert not list(weights.glob(".quantize-*"))
    monkeypatch.setattr(runner_mod, "cuda_usable", lambda: False)
    monkeypatch.setattr(runner_mod, "cpu_has_vnni", lambda: True)
    assert ModelRunner(resolve_model(weights, "auto"), "cpu", threads=1).precision == "int8"


def test_quantize_refused_leaves_the_folder_as_it_was(weights, source) -> None:
    before = {path.name: path.read_bytes() for path in weights.iterdir()}
    with pytest.raises(ExportCheckError, match="int8 vs fp32 instance-map F1"):
        quantize_weights(weights, [source], SETTINGS, SIZES, threads=1, min_f1=IMPOSSIBLE_F1)
    assert {path.name: path.read_bytes() for path in weights.iterdir()} == before


def test_quantize_command_needs_calibration_images(tmp_path) -> None:
    from training.__main__ import cli

    folder = tmp_path / "weights"
    contract_model(folder / CONTRACT.fp32_file)
    write_manifest(folder, [CONTRACT.fp32_file])
    result = CliRunner().invoke(cli, ["quantize", "--weights", str(folder)])
    assert result.exit_code == 1
    assert "no calibration folders" in result.output and "--calibration DIR" in result.output
    assert not (folder / INT8_FILE).exists()
