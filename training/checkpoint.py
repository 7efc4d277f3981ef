"""Training checkpoints: written atomically by the trainer, read back by resume, export and the benchmarks.

A checkpoint is a dict holding the student (and, once Mean Teacher has started, the teacher) weights, the
model config, the training config, the optimiser and the RNG states; those are numpy objects, so reading one
is a full unpickle: load only checkpoints you made or trust.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.writer import write_atomic
from training.config import TrainConfig
from training.model import ModelConfig, MT2Net

WHICH = ("teacher", "student")


def network_state(net: nn.Module, teacher: nn.Module | None, cfg: TrainConfig) -> dict[str, Any]:
    """The part of every checkpoint that rebuilds the networks: weights, model config, preset and whole config."""
    return {
        "student": net.state_dict(),
        "teacher": teacher.state_dict() if teacher is not None else None,
        "model_config": asdict(cfg.model),
        "preset": cfg.preset,
        "config": cfg.to_dict(),
    }


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """torch.save through the app's atomic writer: a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read a checkpoint on the CPU: FileNotFoundError when there is none, ValueError naming the file when it
    cannot be read or is not an MT2 checkpoint (needs 'student' and 'model_config')."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path.name}: no checkpoint in {path.parent.name}")
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for bad files: each becomes one line
        raise ValueError(f"{path.name}: cannot read checkpoint ({str(exc).splitlines()[0]})") from exc
    if not isinstance(ckpt, dict) or "student" not in ckpt or "model_config" not in ckpt:
        raise ValueError(f"{path.name}: not an MT2 checkpoint (needs 'student' and 'model_config')")
    return ckpt


def network_from_checkpoint(ckpt: dict[str, Any], which: str = "teacher") -> tuple[MT2Net, str, str | None]:
    """Rebuild the network with the chosen weights: (net in eval mode, weights used, notice or None).

    The teacher is the default (the EMA average is less noisy); a checkpoint saved before the teacher started
    falls back to the student with a notice.
    """
    if which not in WHICH:
        raise ValueError(f"--which must be one of {WHICH}, got {which!r}")
    notice = None
    state = ckpt.get(which)
    used = which
    if state is None and which == "teacher":
        state, used = ckpt["student"], "student"
        notice = "checkpoint has no teacher (saved before Mean Teacher started): exporting the student"
    if state is None:
        raise ValueError(f"checkpoint has no {which} weights")
    net = MT2Net(ModelConfig.from_dict(ckpt["model_config"]))
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"{used} weights do not fit the checkpoint's model_config ({first})") from exc
    return net.eval(), used, notice


__all__ = ["WHICH", "load_checkpoint", "network_from_checkpoint", "network_state", "save_checkpoint"]
