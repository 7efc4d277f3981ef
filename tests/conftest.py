"""Fixtures shared by the test modules (helpers that build data live in tests/onnx_models.py and
tests/training_data.py)."""

from __future__ import annotations

import pytest

from app.runner import ModelRunner
from tests.onnx_models import contract_model


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> ModelRunner:
    """A real ONNX Runtime session of the tiny contract model (cheap to run and to time), one per test module."""
    return ModelRunner(contract_model(tmp_path_factory.mktemp("contract") / "m.onnx"), device="cpu", threads=1)
