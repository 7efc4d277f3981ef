"""Weights manifest: checksums written by the export, refusals of changed or truncated files."""

from __future__ import annotations

import hashlib
import json

import pytest

from app.config import CONTRACT
from app.errors import ModelError
from app.manifest import read_manifest, sha256_file, verify_model, write_manifest


@pytest.fixture
def weights(tmp_path):
    model = tmp_path / CONTRACT.fp32_file
    model.write_bytes(bytes(range(256)) * 4000)
    write_manifest(tmp_path, [model.name], {"preset": "tiny", "metrics": {"f1": 0.5}})
    return model


def test_sha256_file_matches_hashlib(tmp_path) -> None:
    path = tmp_path / "blob"
    data = b"mt2" * 1_000_000  # several read chunks
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_manifest_records_size_sha_and_meta(weights) -> None:
    data = json.loads((weights.parent / CONTRACT.manifest_file).read_text())
    assert data["preset"] == "tiny"
    assert data["metrics"] == {"f1": 0.5}
    entry = data["files"][weights.name]
    assert entry == {"size": 1_024_000, "sha256": sha256_file(weights)}
    assert verify_model(weights) == entry


def test_precomputed_entries_keep_extra_keys(tmp_path) -> None:
    (tmp_path / "a.onnx").write_bytes(b"abc")
    entry = {"size": 3, "sha256": hashlib.sha256(b"abc").hexdigest(), "precision": "fp16"}
    write_manifest(tmp_path, {"a.onnx": entry})
    assert read_manifest(tmp_path / CONTRACT.manifest_file)["files"]["a.onnx"] == entry
    assert verify_model(tmp_path / "a.onnx") == entry


def test_no_manifest_means_no_check(tmp_path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    assert verify_model(model) is None


def test_flipped_byte_is_refused(weights) -> None:
    data = bytearray(weights.read_bytes())
    data[5000] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=rf"^{weights.name}: model file changed \(sha256") as err:
        verify_model(weights)
    assert "\n" not in str(err.value)


def test_truncated_file_is_refused(weights) -> None:
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelError, match=rf"^{weights.name}: truncated model file \(1000 bytes"):
        verify_model(weights)


def test_unlisted_file_is_refused(weights) -> None:
    other = weights.parent / CONTRACT.fp16_file
    other.write_bytes(b"not listed")
    with pytest.raises(ModelError, match="not listed in manifest.json"):
        verify_model(other)


def test_damaged_manifest_is_refused(weights) -> None:
    (weights.parent / CONTRACT.manifest_file).write_text("{ not json")
    with pytest.raises(ModelError, match="manifest.json: cannot read weights manifest"):
        verify_model(weights)
