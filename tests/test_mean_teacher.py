"""EMA arithmetic on parameters and BatchNorm statistics, and no gradient ever reaching the teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from training.config import TrainConfig, load_config
from training.mean_teacher import ema_update, make_teacher, teacher_probabilities
from training.model import ModelConfig, MT2Net
from training.trainer import build_optimizer, train_step

torch.set_num_threads(1)


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def test_teacher_is_a_frozen_eval_copy():
    torch.manual_seed(0)
    student = small_net().train()
    teacher = make_teacher(student)
    assert not teacher.training and student.training
    assert all(not p.requires_grad for p in teacher.parameters())
    for t, s in zip(teacher.state_dict().values(), student.state_dict().values()):
        assert torch.equal(t, s)
    with torch.no_grad():
        student[0].weight.add_(1.0)
    assert not torch.equal(teacher[0].weight, student[0].weight)  # a copy, not a view


def moved_pair() -> tuple[nn.Module, nn.Module, list[torch.Tensor], list[torch.Tensor]]:
    """A teacher, and its student after one change of weights and BatchNorm statistics; the teacher's before."""
    torch.manual_seed(0)
    student = small_net()
    teacher = make_teacher(student)
    params = [p.detach().clone() for p in teacher.parameters()]
    buffers = [b.detach().clone() for b in teacher.buffers()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student.train()(torch.randn(2, 3, 8, 8) * 3 + 1)  # moves BatchNorm running statistics
    return teacher, student, params, buffers


@pytest.mark.parametrize("average_buffers", [True, False])
def test_ema_arithmetic_and_buffers(average_buffers):
    teacher, student, params, buffers = moved_pair()
    ema_update(teacher, student, 0.9, average_buffers)
    for t, t0, s in zip(teacher.parameters(), params, student.parameters()):
        assert torch.allclose(t, 0.9 * t0 + 0.1 * s, atol=1e-6)
    bn = teacher[1]
    running = [bn.running_mean, bn.running_var]
    assert not torch.equal(student[1].running_mean, buffers[0])  # the student's statistics did move
    for t, t0, s in zip(running, buffers[:2], [student[1].running_mean, student[1].running_var]):
        expected = 0.9 * t0 + 0.1 * s if average_buffers else s
        assert torch.allclose(t, expected, atol=1e-6)
    assert int(bn.num_batches_tracked) == 1  # integer counters are copied either way


def test_ema_extremes():
    teacher, student, _, _ = moved_pair()
    # beta = 1 keeps the teacher, beta = 0 copies the student (statistics included).
    frozen = [p.clone() for p in teacher.parameters()]
    ema_update(teacher, student, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), frozen))
    ema_update(teacher, student, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(teacher.buffers(), student.buffers()))


def test_teacher_probabilities_are_eval_mode_sigmoids_without_graph():
    torch.manual_seed(0)
    net = MT2Net(ModelConfig(encoder="mobilenet_v2", decoder_channels=(8, 8, 8, 8, 8)))
    teacher = make_teacher(net)
    teacher.train()  # even if someone switched it, prediction happens in eval mode
    probs = teacher_probabilities(teacher, torch.rand(2, 3, 32, 32))
    assert not teacher.training
    assert set(probs) == {"cell", "boundary"}
    for p in probs.values():
        assert not p.requires_grad and p.min() >= 0 and p.max() <= 1


def tiny_cfg() -> TrainConfig:
    return load_config(
        "cpu",
        {"model": {"decoder_channels": [8, 8, 8, 8, 8]}, "augment.crop": 32, "augment.cutmix_p": 1.0,
         "teacher.ema_decay": 0.5},
    )


def test_a_training_step_never_sends_gradient_into_the_teacher():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    net = MT2Net(cfg.model)
    teacher = make_teacher(net)
    optimizer = build_optimizer(net, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    labelled = {
        "image": torch.rand(2, 3, 32, 32),
        "cls": torch.randint(0, 3, (2, 32, 32)),
        "cell": torch.rand(2, 1, 32, 32),
        "boundary": torch.rand(2, 1, 32, 32),
    }
    weak = torch.rand(2, 3, 32, 32)
    unlabelled = {"weak": weak, "strong": weak.clone()}
    student_before = [p.detach().clone() for p in net.parameters()]
    teacher_before = [p.detach().clone() for p in teacher.parameters()]
    terms = train_step(net, teacher, labelled, unlabelled, optimizer, scheduler, scaler, cfg, 0, torch.device("cpu"))
    assert terms["consistency"] > 0 and np.isfinite(terms["total"])
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training
    # The teacher moved exactly by the EMA of the updated student (beta 0.5 in this config).
    for t, t0, s, s0 in zip(teacher.parameters(), teacher_before, net.parameters(), student_before):
        assert torch.allclose(t, 0.5 * t0 + 0.5 * s, atol=1e-6)
    assert any(not torch.equal(s, s0) for s, s0 in zip(net.parameters(), student_before))


@pytest.mark.parametrize("beta", [0.995])
def test_paper_decay_is_the_default(beta):
    assert TrainConfig().teacher.ema_decay == beta
