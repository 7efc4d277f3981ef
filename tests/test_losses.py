"""Loss terms: finite, zero where they should be, decreasing when over-fitting one batch, and the
consistency term confined to unlabelled rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.config import LossConfig
from training.losses import consistency_loss, dice_loss, regression_loss, total_loss
from training.model import ModelConfig, MT2Net
from training.targets import make_targets

torch.set_num_threads(1)
CFG = LossConfig()


def disc_batch(n: int = 2, size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images of bright discs and their targets."""
    yy, xx = np.mgrid[:size, :size]
    images, cls, cell, boundary = [], [], [], []
    for i in range(n):
        labels = np.zeros((size, size), np.int32)
        for k, (cy, cx) in enumerate(((20, 20 + 6 * i), (44, 40))):
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 100] = k + 1
        c, ce, b = make_targets(labels)
        images.append(np.repeat((0.2 + 0.6 * (labels > 0))[None], 3, 0))
        cls.append(c)
        cell.append(ce[None])
        boundary.append(b[None])
    as_t = lambda xs, dt: torch.from_numpy(np.stack(xs)).to(dt)  # noqa: E731
    return as_t(images, torch.float32), as_t(cls, torch.int64), as_t(cell, torch.float32), as_t(boundary, torch.float32)


def test_dice_is_zero_for_a_perfect_prediction_and_large_for_a_wrong_one():
    target = torch.randint(0, 3, (2, 16, 16))
    perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    wrong = torch.nn.functional.one_hot((target + 1) % 3, 3).permute(0, 3, 1, 2).float() * 50
    assert float(dice_loss(perfect, target)) == pytest.approx(0.0, abs=1e-4)
    assert float(dice_loss(wrong, target)) > 0.9


def test_regression_loss_is_zero_at_the_target_and_weights_mse_by_ten():
    _, _, cell, _ = disc_batch()
    exact = torch.logit(cell.clamp(1e-6, 1 - 1e-6))
    assert float(regression_loss(exact, cell, CFG)) == pytest.approx(0.0, abs=1e-3)
    off = torch.zeros_like(cell)  # sigmoid 0.5 everywhere
    plain = float(regression_loss(off, cell, LossConfig(mse_weight=0.0)))
    weighted = float(regression_loss(off, cell, CFG))
    mse = float(((0.5 - cell) ** 2).mean())
    assert weighted - plain == pytest.approx(10 * mse, rel=1e-4)


def test_consistency_is_mse_of_sigmoids_against_the_teacher():
    student = {"cell": torch.zeros(2, 1, 8, 8), "boundary": torch.zeros(2, 1, 8, 8)}
    teacher = {"cell": torch.ones(2, 1, 8, 8), "boundary": torch.zeros(2, 1, 8, 8)}
    assert float(consistency_loss(student, teacher)) == pytest.approx(0.25 + 0.25)


def test_consistency_sees_only_unlabelled_rows():
    _, cls, cell, boundary = disc_batch(2, 32)
    outputs = {
        "cls": torch.randn(5, 3, 32, 32),
        "cell": torch.randn(5, 1, 32, 32, requires_grad=True),
        "boundary": torch.randn(5, 1, 32, 32),
    }
    teacher = {"cell": torch.rand(3, 1, 32, 32), "boundary": torch.rand(3, 1, 32, 32)}
    terms = total_loss(outputs, 2, cls, cell, boundary, teacher, CFG)
    terms["consistency"].backward()
    grad = outputs["cell"].grad
    assert torch.all(grad[:2] == 0) and torch.any(grad[2:] != 0)
    # Changing the labelled rows leaves the consistency term unchanged.
    changed = {k: v.detach().clone() for k, v in outputs.items()}
    changed["cell"][:2] += 5
    again = total_loss(changed, 2, cls, cell, boundary, teacher, CFG)
    assert float(again["consistency"]) == pytest.approx(float(terms["consistency"].detach()))
    # No unlabelled rows, or no teacher yet: no consistency term.
    labelled_only = {k: v[:2].detach() for k, v in outputs.items()}
    assert float(total_loss(labelled_only, 2, cls, cell, boundary, None, CFG)["consistency"]) == 0.0
    assert float(total_loss(outputs, 2, cls, cell, boundary, None, CFG)["consistency"]) == 0.0


def test_total_adds_labelled_and_weighted_consistency():
    _, cls, cell, boundary = disc_batch(2, 32)
    outputs = {"cls": torch.randn(4, 3, 32, 32), "cell": torch.randn(4, 1, 32, 32),
               "boundary": torch.randn(4, 1, 32, 32)}
    teacher = {"cell": torch.rand(2, 1, 32, 32), "boundary": torch.rand(2, 1, 32, 32)}
    terms = total_loss(outputs, 2, cls, cell, boundary, teacher, LossConfig(consistency_weight=2.0))
    assert float(terms["labelled"]) == pytest.approx(float(terms["cls"] + terms["cell"] + terms["boundary"]))
    assert float(terms["total"]) == pytest.approx(float(terms["labelled"] + 2 * terms["consistency"]))


def test_losses_are_finite_and_fall_when_over_fitting_one_batch():
    torch.manual_seed(0)
    net = MT2Net(ModelConfig(encoder="mobilenet_v2", decoder_channels=(16, 16, 16, 16, 16)))
    images, cls, cell, boundary = disc_batch(2, 64)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    history = []
    for _ in range(25):
        terms = total_loss(net(images), 2, cls, cell, boundary, None, CFG)
        assert all(torch.isfinite(v) for v in terms.values())
        optimizer.zero_grad()
        terms["total"].backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in terms.items()})
    for name in ("cls", "cell", "boundary", "total"):
        first = np.mean([h[name] for h in history[:3]])
        last = np.mean([h[name] for h in history[-3:]])
        assert last < 0.8 * first, name
