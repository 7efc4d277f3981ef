"""MT2 losses (paper section 2.2.2, equations 1-4).

L_labelled = CE + Dice on the 3-class head, plus (1 - SSIM) + mse_weight * MSE on the sigmoid cell and
boundary heatmaps; L_con = MSE(sigmoid(student(strong)), stop-grad(teacher(weak))) on cell and boundary,
computed on unlabelled crops only. Losses are evaluated in float32 even under mixed precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim

from training.config import LossConfig

HEATMAPS: tuple[str, ...] = ("cell", "boundary")


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - mean over classes of the soft Dice of softmax(logits) against one-hot(target), pooled over the batch."""
    probs = logits.float().softmax(dim=1)
    onehot = F.one_hot(target, probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    total = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2.0 * inter + smooth) / (total + smooth)).mean()


def cls_loss(logits: torch.Tensor, target: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """Equation 1: cross entropy + Dice on the 3-class head."""
    return F.cross_entropy(logits.float(), target) + dice_loss(logits, target, cfg.dice_smooth)


def regression_loss(logits: torch.Tensor, target: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    """Equation 2: (1 - SSIM) + mse_weight * MSE between sigmoid(logits) and a heatmap in [0, 1]."""
    pred = logits.float().sigmoid()
    target = target.float()
    structural = 1.0 - ssim(pred, target, data_range=1.0, size_average=True, win_size=cfg.ssim_window)
    return structural + cfg.mse_weight * F.mse_loss(pred, target)


def supervised_loss(
    outputs: dict[str, torch.Tensor], cls: torch.Tensor, cell: torch.Tensor, boundary: torch.Tensor, cfg: LossConfig
) -> dict[str, torch.Tensor]:
    """Equation 3 on labelled crops; returns the terms and their sum under "labelled"."""
    terms = {
        "cls": cls_loss(outputs["cls"], cls, cfg),
        "cell": regression_loss(outputs["cell"], cell, cfg),
        "boundary": regression_loss(outputs["boundary"], boundary, cfg),
    }
    terms["labelled"] = terms["cls"] + terms["cell"] + terms["boundary"]
    return terms


def consistency_loss(student: dict[str, torch.Tensor], teacher_probs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Equation 4 summed over cell and boundary: MSE(sigmoid(student logits), detached teacher probabilities)."""
    total = torch.zeros((), device=student["cell"].device)
    for name in HEATMAPS:
        total = total + F.mse_loss(student[name].float().sigmoid(), teacher_probs[name].detach().float())
    return total


def split_outputs(outputs: dict[str, torch.Tensor], n_labelled: int) -> tuple[dict, dict]:
    """Student outputs of one concatenated batch -> (labelled part, unlabelled part)."""
    return (
        {k: v[:n_labelled] for k, v in outputs.items()},
        {k: v[n_labelled:] for k, v in outputs.items()},
    )


def total_loss(
    outputs: dict[str, torch.Tensor],
    n_labelled: int,
    cls: torch.Tensor,
    cell: torch.Tensor,
    boundary: torch.Tensor,
    teacher_probs: dict[str, torch.Tensor] | None,
    cfg: LossConfig,
) -> dict[str, torch.Tensor]:
    """All terms for a batch whose first `n_labelled` crops are labelled and the rest unlabelled (strong views).

    The consistency term sees only the unlabelled rows; it is zero when there are none or no teacher yet.
    """
    labelled, unlabelled = split_outputs(outputs, n_labelled)
    terms = supervised_loss(labelled, cls, cell, boundary, cfg)
    n_unlabelled = outputs["cell"].shape[0] - n_labelled
    if teacher_probs is not None and n_unlabelled > 0:
        terms["consistency"] = consistency_loss(unlabelled, teacher_probs)
    else:
        terms["consistency"] = torch.zeros((), device=outputs["cell"].device)
    terms["total"] = terms["labelled"] + cfg.consistency_weight * terms["consistency"]
    return terms


__all__ = [
    "HEATMAPS",
    "cls_loss",
    "consistency_loss",
    "dice_loss",
    "regression_loss",
    "split_outputs",
    "supervised_loss",
    "total_loss",
]
