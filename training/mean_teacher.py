"""The Mean Teacher (Tarvainen and Valpola 2017) as MT2 uses it (paper section 2.2.2).

When warm-up ends the teacher is a copy of the student; after every optimiser step its parameters become
beta * teacher + (1 - beta) * student. Its floating buffers (BatchNorm running mean and variance) are averaged
the same way by default, so the statistics it normalises with belong to the weights it holds: copying the
student's current statistics onto weights that lag a few hundred steps behind mismatches them while the student
still moves fast, which is the whole of a short run. Integer buffers (batch counters) are copied. The teacher
never requires gradients and always predicts in eval mode.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen, eval-mode deep copy of the student."""
    teacher = copy.deepcopy(student)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, beta: float, average_buffers: bool = True) -> None:
    """teacher <- beta * teacher + (1 - beta) * student for parameters and, with `average_buffers`, floating
    buffers; the other buffers are copied from the student."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(beta).add_(s.detach().to(t.dtype), alpha=1.0 - beta)
    for tb, sb in zip(teacher.buffers(), student.buffers(), strict=True):
        if average_buffers and tb.is_floating_point():
            tb.mul_(beta).add_(sb.detach().to(tb.dtype), alpha=1.0 - beta)
        else:
            tb.copy_(sb)


@torch.no_grad()
def teacher_probabilities(teacher: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sigmoid cell and boundary maps of the teacher on (weak) images; eval mode, no graph kept."""
    teacher.eval()
    out = teacher(images)
    return {"cell": out["cell"].float().sigmoid(), "boundary": out["boundary"].float().sigmoid()}


__all__ = ["ema_update", "make_teacher", "teacher_probabilities"]
