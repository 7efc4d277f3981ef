"""ModelRunner and resolve_model: contract check, fp16 and int8 models, device choice, model file selection."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

import app.runner as runner_mod
from app.config import CONTRACT
from app.errors import ModelError
from app.manifest import write_manifest
from app.runner import INT8_FILE, ModelRunner, cpu_has_vnni, cuda_usable, initializer_bytes, resolve_model
from tests.onnx_models import contract_model, fp16_io_model, int8_model, shaped_model


def batch(n: int = 2, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


def test_fp32_model_runs_and_reports(tmp_path):
    runner = ModelRunner(contract_model(tmp_path / "m.onnx"), "cpu", threads=1)
    assert runner.provider == "CPUExecutionProvider"
    assert runner.precision == "fp32" and runner.dtype == np.float32
    cls, cell, boundary = runner.run(batch())
    assert cls.shape == (2, 3, 64, 64) and cell.shape == boundary.shape == (2, 1, 64, 64)
    assert cls.dtype == cell.dtype == boundary.dtype == np.float32
    np.testing.assert_allclose(cls.sum(axis=1), 1.0, atol=1e-5)


def test_auto_device_gets_the_provider_the_machine_really_has(tmp_path):
    runner = ModelRunner(contract_model(tmp_path / "m.onnx"), "auto", threads=1)
    assert runner.provider == ("CUDAExecutionProvider" if cuda_usable() else "CPUExecutionProvider")
    assert runner.provider == runner.session.get_providers()[0]


@pytest.mark.parametrize(
    "build, io_dtype",
    [
        (lambda path: contract_model(path, fp16=True), np.float32),  # keep_io_types export: float32 in and out
        (fp16_io_model, np.float16),  # float16 throughout, inputs and outputs included
    ],
    ids=["float32-io", "float16-io"],
)
def test_fp16_model_matches_fp32(tmp_path, build, io_dtype):
    reference = ModelRunner(contract_model(tmp_path / "m32.onnx"), "cpu", threads=1)
    runner = ModelRunner(build(tmp_path / "m16.onnx"), "cpu", threads=1)
    assert runner.precision == "fp16" and runner.dtype == io_dtype
    got, want = runner.run(batch()), reference.run(batch())
    for g, w in zip(got, want):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, w, atol=1e-2)


def test_int8_model_runs_with_float_io_and_reports_int8(tmp_path):
    reference = ModelRunner(contract_model(tmp_path / "m32.onnx"), "cpu", threads=1)
    runner = ModelRunner(int8_model(tmp_path / "m8.onnx"), "cpu", threads=1)
    assert runner.precision == "int8" and runner.dtype == np.float32
    got, want = runner.run(batch()), reference.run(batch())
    for g, w in zip(got, want):
        assert g.dtype == np.float32 and g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=0.1)  # 8-bit activations: close, not equal
    assert not all(np.array_equal(g, w) for g, w in zip(got, want))  # really the quantised arithmetic


def test_fixed_batch_model_runs_any_batch(tmp_path):
    runner = ModelRunner(shaped_model(tmp_path / "b2.onnx", input_dims=(2, None, "H", "W")), "cpu", threads=1)
    x = batch(n=3)
    _, cell, _ = runner.run(x)
    assert cell.shape == (3, 1, 64, 64)
    np.testing.assert_allclose(cell[:, 0], x.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize(
    "names,message",
    [
        (("input", "cls", "cell", "boundary"), r"inputs are \['input'\].*'image'"),
        (("image", "cls", "cells", "boundary"), r"outputs are \['boundary', 'cells', 'cls'\]"),
    ],
)
def test_wrong_names_refused(tmp_path, names, message):
    path = contract_model(tmp_path / "named.onnx", names=names)
    with pytest.raises(ModelError, match=message) as info:
        ModelRunner(path, "cpu")
    assert str(info.value).startswith("named.onnx: ")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"input_channels": 1}, "'image' has 1 channels, expected 3"),
        ({"cls_channels": 2}, "'cls' has 2 channels, expected 3"),
        ({"input_type": TensorProto.DOUBLE}, "'image' has element type tensor.double."),
        ({"input_dims": ("N", None, "H")}, "'image' has rank 3, expected 4"),
    ],
)
def test_wrong_shapes_and_types_refused(tmp_path, kwargs, message):
    with pytest.raises(ModelError, match=message):
        ModelRunner(shaped_model(tmp_path / "bad.onnx", **kwargs), "cpu")


def test_not_an_onnx_file_refused(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"this is not a model")
    with pytest.raises(ModelError, match="junk.onnx: cannot load the ONNX model"):
        ModelRunner(path, "cpu")


def test_missing_file_and_bad_options_refused(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        ModelRunner(tmp_path / "absent.onnx", "cpu")
    model = contract_model(tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="device must be one of"):
        ModelRunner(model, "gpu")
    with pytest.raises(ModelError, match="cudnn_search"):
        ModelRunner(model, "cpu", cudnn_search="FAST")


def test_cuda_requested_without_a_gpu_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(runner_mod, "cuda_usable", lambda: False)
    with pytest.raises(ModelError, match="no usable CUDA GPU"):
        ModelRunner(contract_model(tmp_path / "m.onnx"), "cuda")


def test_probe_model_is_valid_onnx():
    model = onnx.load_from_string(runner_mod._probe_model())
    onnx.checker.check_model(model)
    session = ort.InferenceSession(runner_mod._probe_model(), providers=["CPUExecutionProvider"])
    x = np.array([0.25], np.float32)
    assert session.run(None, {"x": x})[0].tolist() == [0.25]


def test_initializer_bytes_tell_fp16_from_fp32(tmp_path):
    fp32 = initializer_bytes(contract_model(tmp_path / "a.onnx"))
    fp16 = initializer_bytes(contract_model(tmp_path / "b.onnx", fp16=True))
    assert set(fp32) == {runner_mod.ONNX_FLOAT}
    assert fp16.get(runner_mod.ONNX_FLOAT16, 0) > fp16.get(runner_mod.ONNX_FLOAT, 0)
    int8 = initializer_bytes(int8_model(tmp_path / "c.onnx"))
    assert int8.get(runner_mod.ONNX_INT8, 0) > 0 and runner_mod.ONNX_FLOAT16 not in int8


@pytest.fixture
def weights(tmp_path):
    folder = tmp_path / "weights"
    contract_model(folder / CONTRACT.fp32_file)
    contract_model(folder / CONTRACT.fp16_file, fp16=True)
    return folder


def test_resolve_file_is_used_as_is(weights):
    path = weights / CONTRACT.fp16_file
    assert resolve_model(path, "cpu") == path


def test_resolve_folder_by_device(weights, monkeypatch):
    assert resolve_model(weights, "cpu") == weights / CONTRACT.fp32_file
    monkeypatch.setattr(runner_mod, "cuda_usable", lambda: True)
    assert resolve_model(weights, "auto") == weights / CONTRACT.fp16_file
    assert resolve_model(weights, "cuda") == weights / CONTRACT.fp16_file
    monkeypatch.setattr(runner_mod, "cuda_usable", lambda: False)
    assert resolve_model(weights, "auto") == weights / CONTRACT.fp32_file


def test_resolve_folder_falls_back_to_the_file_that_exists(weights, monkeypatch):
    monkeypatch.setattr(runner_mod, "cuda_usable", lambda: True)
    (weights / CONTRACT.fp16_file).unlink()
    assert resolve_model(weights, "auto") == weights / CONTRACT.fp32_file
    (weights / CONTRACT.fp32_file).unlink()
    with pytest.raises(ModelError, match="neither mt2.fp32.onnx nor mt2.fp16.onnx"):
        resolve_model(weights, "auto")


def test_resolve_missing_path(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        resolve_model(tmp_path / "nowhere", "cpu")


def test_resolve_checks_the_manifest(weights):
    write_manifest(weights, [CONTRACT.fp32_file, CONTRACT.fp16_file])
    assert resolve_model(weights, "cpu") == weights / CONTRACT.fp32_file
    with open(weights / CONTRACT.fp32_file, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelError, match=CONTRACT.fp32_file):
        resolve_model(weights, "cpu")


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(runner_mod, "cuda_usable", lambda: False)


def with_int8(folder, listed: bool = True):
    """The weights folder plus an int8 file (any contract model will do for choosing files), listed in a
    manifest with the others or present without being listed."""
    contract_model(folder / INT8_FILE)
    names = [CONTRACT.fp32_file, CONTRACT.fp16_file, *([INT8_FILE] if listed else [])]
    write_manifest(folder, names)
    return folder


def test_auto_takes_int8_on_a_vnni_cpu_when_the_manifest_lists_it(weights, cpu_only, monkeypatch):
    with_int8(weights)
    monkeypatch.setattr(runner_mod, "cpu_has_vnni", lambda: True)
    assert resolve_model(weights, "auto") == weights / INT8_FILE
    assert resolve_model(weights, "cpu", "auto") == weights / INT8_FILE
    monkeypatch.setattr(runner_mod, "cpu_has_vnni", lambda: False)
    assert resolve_model(weights, "cpu") == weights / CONTRACT.fp32_file


def test_auto_keeps_fp32_where_int8_is_absent_or_unlisted(weights, cpu_only, monkeypatch):
    monkeypatch.setattr(runner_mod, "cpu_has_vnni", lambda: True)
    assert resolve_model(weights, "cpu") == weights / CONTRACT.fp32_file  # no int8 file, no manifest
    with_int8(weights, listed=False)
    (weights / INT8_FILE).unlink()  # listed nowhere and absent
    assert resolve_model(weights, "cpu") == weights / CONTRACT.fp32_file
    contract_model(weights / INT8_FILE)  # present but not in the manifest: never chosen on its own
    assert resolve_model(weights, "cpu") == weights / CONTRACT.fp32_file


def test_auto_never_takes_int8_on_cuda(weights, monkeypatch):
    with_int8(weights)
    monkeypatch.setattr(runner_mod, "cpu_has_vnni", lambda: True)
    monkeypatch.setattr(runner_mod, "cuda_usable", lambda: True)
    assert resolve_model(weights, "auto") == weights / CONTRACT.fp16_file
    (weights / CONTRACT.fp16_file).unlink()
    assert resolve_model(weights, "auto") == weights / CONTRACT.fp32_file  # the int8 file is for CPUs


def test_explicit_precision_takes_its_file(weights, cpu_only, monkeypatch):
    with_int8(weights)
    monkeypatch.setattr(runner_mod, "cpu_has_vnni", lambda: False)
    assert resolve_model(weights, "cpu", "int8") == weights / INT8_FILE  # asked for: no VNNI needed
    assert resolve_model(weights, "cpu", "fp16") == weights / CONTRACT.fp16_file
    assert resolve_model(weights, "cpu", "fp32") == weights / CONTRACT.fp32_file


def test_explicit_int8_without_the_file_is_an_error(weights, cpu_only):
    with pytest.raises(ModelError, match=f"precision int8 asked for, but there is no {INT8_FILE}"):
        resolve_model(weights, "cpu", "int8")
    (weights / CONTRACT.fp16_file).unlink()
    with pytest.raises(ModelError, match=CONTRACT.fp16_file):
        resolve_model(weights, "cpu", "fp16")


def test_unknown_precision_is_an_error(weights):
    with pytest.raises(ModelError, match="precision must be one of auto, fp32, fp16, int8, got 'int4'"):
        resolve_model(weights, "cpu", "int4")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n", True),
        ("flags\t\t: fpu sse avx2 avx_vnni\n", True),
        ("flags\t\t: fpu sse avx2 avx512f avx512vl\n", False),  # AVX-512 without VNNI
        ("processor\t: 0\nFeatures\t: fp asimd asimddp\n", False),  # ARM: no x86 flags line
    ],
    ids=["avx512-vnni", "avx-vnni", "no-vnni", "arm"],
)
def test_vnni_detection_reads_the_cpu_flags(tmp_path, monkeypatch, text, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    monkeypatch.setattr(runner_mod, "CPUINFO", cpuinfo)
    cpu_has_vnni.cache_clear()
    try:
        assert cpu_has_vnni() is expected
        monkeypatch.setattr(runner_mod, "CPUINFO", tmp_path / "absent")
        cpu_has_vnni.cache_clear()
        assert cpu_has_vnni() is False
    finally:
        cpu_has_vnni.cache_clear()
