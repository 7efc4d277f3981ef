"""One schedule for a whole run: warm-up and cosine, and a run taken up from exported weights at its step."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from app.config import CONTRACT
from app.runner import ModelRunner
from tests.training_data import tiny_config, write_dataset
from training.checkpoint import load_checkpoint
from training.export import export_fp32_only
from training.schedule import continuation, cosine_factor, lr_factor
from training.trainer import LAST, train

torch.set_num_threads(1)


def test_warm_up_then_one_cosine():
    assert lr_factor(0, 100, 10, 0.0) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.0) == pytest.approx(1.0)  # the peak is reached at the end of warm-up
    assert lr_factor(10, 100, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.0) == pytest.approx(0.5)  # half-way through the cosine
    assert lr_factor(100, 100, 10, 0.02) == pytest.approx(0.02)
    assert lr_factor(30, 100, 0, 0.0) == pytest.approx(cosine_factor(30, 100, 0.0))  # no warm-up: plain cosine
    factors = [lr_factor(s, 1000, 50, 0.02) for s in range(1000)]
    assert all(b > a for a, b in zip(factors[:49], factors[1:50]))
    assert all(b <= a for a, b in zip(factors[50:], factors[51:]))


def test_a_run_taken_up_from_exported_weights_follows_the_schedule(tmp_path):
    data = write_dataset(tmp_path / "d", labelled=6, unlabelled=2)
    cfg = tiny_config(**{"schedule.epochs": 20, "schedule.max_steps": 12, "optim.warmup_steps": 3,
                         "optim.min_lr_ratio": 0.1, "teacher.warmup_epochs": 0})
    first = tmp_path / "first"
    train(cfg, data, first, stop_at=5)
    weights = tmp_path / "weights"
    export_fp32_only(first / LAST, weights)
    manifest = json.loads((weights / CONTRACT.manifest_file).read_text())
    assert manifest["checkpoint"]["schedule"] == {"step": 5, "total_steps": 12, "warmup_steps": 3}

    taken = continuation(weights)
    assert (taken.step, taken.onnx.name) == (5, CONTRACT.fp32_file)
    assert taken.config.schedule.max_steps == 12 and taken.config.optim.warmup_steps == 3
    second = tmp_path / "second"
    train(taken.config, data, second, init_onnx=taken.onnx, start_step=taken.step, stop_at=7)
    ckpt = load_checkpoint(second / LAST)
    assert ckpt["step"] == 7 and ckpt["teacher"] is not None  # the weights are the teacher from the first step
    peak = cfg.optim.lr
    # after steps 5 and 6 the scheduler stands at step 7: not a new warm-up, not the peak
    assert ckpt["scheduler"]["_last_lr"][-1] == pytest.approx(peak * lr_factor(7, 12, 3, 0.1))
    assert ckpt["scheduler"]["_last_lr"][-1] < 0.75 * peak


def test_weights_without_a_schedule_are_refused_in_one_line(tmp_path):
    (tmp_path / CONTRACT.manifest_file).write_text(json.dumps({"checkpoint": {"step": 1000}}))
    (tmp_path / CONTRACT.fp32_file).write_bytes(b"")
    with pytest.raises(ValueError, match="no place in a training schedule"):
        continuation(tmp_path)
    with pytest.raises(FileNotFoundError, match="needs"):
        continuation(tmp_path / "missing")


def test_bfloat16_channels_last_training_gives_finite_losses_and_a_contract_model(tmp_path):
    data = write_dataset(tmp_path / "d", labelled=4, unlabelled=2)
    cfg = tiny_config(**{"runtime.cpu_bf16": True, "runtime.channels_last": True, "teacher.warmup_epochs": 0})
    run = tmp_path / "run"
    train(cfg, data, run)
    rows = list(csv.DictReader(open(run / "log.csv")))
    losses = [float(row[f"loss_{t}"]) for row in rows for t in ("total", "cls", "cell", "boundary", "consistency")
              if row["loss_total"]]
    assert losses and all(math.isfinite(v) for v in losses)
    export_fp32_only(run / LAST, tmp_path / "weights")
    runner = ModelRunner(tmp_path / "weights" / CONTRACT.fp32_file, device="cpu", threads=1)
    cls, cell, boundary = runner.run(torch.rand(1, 3, 64, 64).numpy())
    assert cls.shape == (1, 3, 64, 64) and cell.shape == boundary.shape == (1, 1, 64, 64)
    assert abs(float(cls.sum(1).mean()) - 1.0) < 1e-4  # a softmax, as the contract says
