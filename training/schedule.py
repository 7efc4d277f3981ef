"""One learning-rate schedule for a whole run, however many sittings it takes.

A run is planned for its full length: a linear warm-up over `optim.warmup_steps`, then one cosine decay to
`optim.min_lr_ratio` at the last planned step. Resuming from the run folder restores the scheduler with the
rest of the state (training/trainer.py). When the run folder is lost, the exported weights still carry their
place in the schedule (`schedule` in the checkpoint and in the manifest beside the ONNX files), and
`continuation` takes the run up there: the same config and planned length, the weights as student and
teacher, the learning rate of the recorded step instead of a new warm-up at the peak.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.config import CONTRACT
from training.config import TrainConfig, with_overrides
from training.data import steps_per_epoch


def cosine_factor(step: int, total: int, min_ratio: float) -> float:
    """Cosine annealing from 1 to `min_ratio` over `total` steps, as a learning-rate multiplier."""
    progress = min(step, total) / max(total, 1)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """The multiplier of the peak learning rate at `step`: linear warm-up over `warmup` steps (reaching 1 at step
    warmup - 1), then a cosine from 1 to `min_ratio` over the remaining `total - warmup` steps."""
    if step < warmup:
        return (step + 1) / warmup
    return cosine_factor(step - warmup, max(total - warmup, 1), min_ratio)


def step_budget(cfg: TrainConfig, labelled: int, world: int) -> tuple[int, int]:
    """(steps per epoch, total steps): the epochs' steps, capped by `schedule.max_steps` when set."""
    steps = steps_per_epoch(labelled, cfg.data.repeats, cfg.schedule.batch_size, world)
    total = steps * cfg.schedule.epochs
    return steps, min(total, cfg.schedule.max_steps) if cfg.schedule.max_steps > 0 else total


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total: int, start_step: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """The run's LambdaLR, positioned at `start_step` (the optimiser's groups then hold that step's rates)."""
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, total, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio),
        last_epoch=start_step - 1,
    )


def schedule_record(step: int, total: int, cfg: TrainConfig) -> dict[str, int]:
    """Where a checkpoint sits in its run's schedule (stored in the checkpoint and copied to the manifest)."""
    return {"step": step, "total_steps": total, "warmup_steps": cfg.optim.warmup_steps}


@dataclass(frozen=True)
class Continuation:
    """A run taken up from exported weights: their fp32 file, the recorded step and the run's config."""

    onnx: Path
    step: int
    config: TrainConfig


def continuation(weights_dir: Path, config: TrainConfig | None = None) -> Continuation:
    """Read `weights_dir/manifest.json` for the step and planned length its weights were exported at; the
    manifest's training config is used unless `config` is given, its planned length always."""
    manifest_path = Path(weights_dir) / CONTRACT.manifest_file
    onnx = Path(weights_dir) / CONTRACT.fp32_file
    if not manifest_path.is_file() or not onnx.is_file():
        raise FileNotFoundError(f"{Path(weights_dir).name}: needs {CONTRACT.manifest_file} and {CONTRACT.fp32_file}")
    manifest: dict[str, Any] = json.loads(manifest_path.read_text())
    record = manifest.get("checkpoint", {}).get("schedule")
    if not record:
        raise ValueError(
            f"{manifest_path.name}: records no place in a training schedule (exported before schedules were "
            "recorded); start a new run with --init-onnx"
        )
    if config is None:
        config = TrainConfig.from_dict(manifest["training"]["config"])
    config = with_overrides(config, {"schedule.max_steps": int(record["total_steps"]),
                                     "optim.warmup_steps": int(record["warmup_steps"])})
    return Continuation(onnx, int(record["step"]), config)


__all__ = [
    "Continuation",
    "continuation",
    "cosine_factor",
    "lr_factor",
    "make_scheduler",
    "schedule_record",
    "step_budget",
]
