"""The training loop on a tiny dataset drawn in the test: schedule, bad inputs, checkpoint -> resume,
and a two-process Gloo run."""

from __future__ import annotations

import csv
import shutil
import socket
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch
import torch.multiprocessing as mp

from app.config import InferenceConfig
from tests.log_capture import logged
from tests.training_data import tiny_config, write_dataset
from training.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.data import prepare_all, split_dataset, steps_per_epoch
from training.model import ModelConfig, MT2Net
from training.schedule import cosine_factor
from training.trainer import (
    BEST,
    LAST,
    build_optimizer,
    load_encoder_weights,
    train,
    validation_config,
    validation_plan,
)

torch.set_num_threads(1)


def test_validation_runs_one_pass_like_the_app_unless_the_encoder_is_too_deep():
    shallow = validation_config(tiny_config())
    assert shallow.one_pass_max_side == InferenceConfig.one_pass_max_side and shallow.window == 64
    deep = validation_config(tiny_config(**{"model.encoder_depth": 6, "augment.crop": 128}))
    assert deep.one_pass_max_side == 0  # one pass pads to 32, which six 2x downsamplings cannot take


def test_cosine_schedule_and_parameter_groups():
    assert cosine_factor(0, 100, 0.0) == pytest.approx(1.0)
    assert cosine_factor(50, 100, 0.0) == pytest.approx(0.5)
    assert cosine_factor(100, 100, 0.1) == pytest.approx(0.1)
    assert cosine_factor(500, 100, 0.0) == pytest.approx(0.0)
    cfg = tiny_config(**{"optim.encoder_lr": 1e-4, "optim.lr": 1e-3})
    net = MT2Net(cfg.model)
    groups = build_optimizer(net, cfg).param_groups
    assert [g["lr"] for g in groups] == [1e-4, 1e-3]
    encoder = {id(p) for p in net.encoder.parameters()}
    assert {id(p) for p in groups[0]["params"]} == encoder
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


def test_encoder_weights_load_from_a_torchvision_state_dict(tmp_path):
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    net = MT2Net(ModelConfig(encoder="resnet18", decoder_channels=(8, 8, 8, 8, 8)))
    count = load_encoder_weights(net, path)
    assert count == len(net.encoder.state_dict())  # everything but the classifier (fc)
    assert torch.equal(net.encoder.conv1.weight, reference.conv1.weight)
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth: no tensor matches the resnet18 encoder"):
        load_encoder_weights(net, tmp_path / "other.pth")


def test_steps_per_epoch_counts_all_ranks():
    assert steps_per_epoch(10, 1, 4, 1) == 3
    assert steps_per_epoch(10, 2, 4, 2) == 3
    assert steps_per_epoch(1, 1, 24, 4) == 1


def test_split_is_seeded_and_labelled_fraction_moves_images_to_unlabelled(tmp_path):
    data = write_dataset(tmp_path / "d", labelled=8, unlabelled=1, size=24)
    cfg = tiny_config(**{"data.labelled_fraction": 0.5, "data.val_fraction": 0.25}).data
    a, b = split_dataset(data, cfg), split_dataset(data, cfg)
    assert [s.name for s in a.validation] == [s.name for s in b.validation]
    assert len(a.validation) == 2 and len(a.labelled) == 3 and len(a.unlabelled) == 1 + 3
    names = {s.name for s in a.labelled} | {s.name for s in a.validation} | {s.name for s in a.unlabelled}
    assert len(names) == 9
    assert all(s.label is None for s in a.unlabelled)
    other = split_dataset(data, tiny_config(**{"data.seed": 1, "data.val_fraction": 0.25}).data)
    assert len(other.labelled) == 6


def test_crops_do_not_depend_on_worker_processes(tmp_path):
    from torch.utils.data import DataLoader

    from training.data import EpochSampler, LabelledCrops

    data = write_dataset(tmp_path / "d", labelled=3, unlabelled=0, size=48)
    cfg = tiny_config()
    split = split_dataset(data, cfg.data)
    prepared, _ = prepare_all(split.labelled, tmp_path / "cache", cfg.data, cfg.targets, InferenceConfig())
    dataset = LabelledCrops(prepared, cfg.augment, seed=0)
    batches = []
    for workers in (0, 1):
        sampler = EpochSampler(len(dataset), 2, 2, epoch=3, seed=0, stream=0)
        loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=workers)
        batches.append([b["image"] for b in loader])
    assert len(batches[0]) == 2
    assert all(torch.equal(a, b) for a, b in zip(*batches))


def test_epoch_sampler_shards_one_order_across_ranks():
    from training.data import EpochSampler

    whole = list(EpochSampler(5, 2, 3, epoch=1, seed=4, stream=0))
    ranks = [list(EpochSampler(5, 2, 3, epoch=1, seed=4, stream=0, rank=r, world=2)) for r in range(2)]
    assert len(whole) == 6 and all(len(r) == 6 for r in ranks)
    merged = sorted(ranks[0] + ranks[1], key=lambda key: key[2])
    assert [k[0] for k in merged] == [k[0] for k in EpochSampler(5, 12, 1, epoch=1, seed=4, stream=0)]
    assert not set(k[2] for k in ranks[0]) & set(k[2] for k in ranks[1])
    assert [k[0] for k in whole] != [k[0] for k in EpochSampler(5, 2, 3, epoch=2, seed=4, stream=0)]


def test_bad_inputs_are_named_and_skipped(tmp_path):
    data = write_dataset(tmp_path / "d", labelled=2, unlabelled=1, size=32)
    (data / "images" / "orphan.png").write_bytes((data / "images" / "cell_000.png").read_bytes())
    iio.imwrite(data / "images" / "small.png", np.zeros((16, 16, 3), np.uint8))
    tifffile.imwrite(data / "labels" / "small_label.tiff", np.ones((20, 20), np.uint16))
    iio.imwrite(data / "images" / "empty.png", np.zeros((32, 32, 3), np.uint8))
    tifffile.imwrite(data / "labels" / "empty_label.tiff", np.zeros((32, 32), np.uint16))
    (data / "images" / "broken.png").write_bytes(b"not an image at all")
    tifffile.imwrite(data / "labels" / "broken_label.tiff", np.ones((32, 32), np.uint16))
    cfg = tiny_config(**{"data.val_fraction": 0.0})
    split = split_dataset(data, cfg.data)
    assert split.problems == ["orphan.png: no label file orphan_label.tiff"]
    with logged("training.data") as reported:
        prepared, problems = prepare_all(split.labelled, tmp_path / "cache", cfg.data, cfg.targets, InferenceConfig())
    assert reported == problems and len(problems) == 3
    text = "\n".join(problems)
    assert "small_label.tiff: label is 20×20 but its image is 16×16" in text
    assert "empty_label.tiff: label map has no cells" in text
    assert text.count("broken.png:") == 1
    assert sorted(p.name for p in prepared) == ["cell_000", "cell_001"]


def test_no_usable_labelled_image_stops_before_training(tmp_path):
    data = tmp_path / "d"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    with pytest.raises(ValueError, match="no usable labelled image"):
        train(tiny_config(), data, tmp_path / "run")
    assert not (tmp_path / "run" / LAST).exists()


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_repeats_the_uninterrupted_run(tmp_path):
    data = write_dataset(tmp_path / "d")
    cfg = tiny_config()
    full = tmp_path / "full"
    snapshot = tmp_path / "after_epoch_1.pt"

    def keep_epoch_one(message: str) -> None:  # runs right after epoch 1's checkpoint is written
        if message.startswith("epoch 1:"):
            shutil.copy(full / LAST, snapshot)

    with logged("training.trainer", on_line=keep_epoch_one):
        train(cfg, data, full)
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(snapshot, resumed / LAST)
    best = train(cfg, data, resumed, resume=True)
    a, b = load_checkpoint(full / LAST), load_checkpoint(best.parent / LAST)
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 2 * steps_per_epoch(3, 1, 2, 1)
    assert a["teacher"] is not None  # the resumed half crossed the end of warm-up
    assert _states_equal(a["student"], b["student"]) and _states_equal(a["teacher"], b["teacher"])
    last_row = lambda run: list(csv.DictReader(open(run / "log.csv")))[-1]  # noqa: E731
    assert last_row(full)["loss_total"] == last_row(resumed)["loss_total"]


def test_resume_inside_an_epoch_repeats_the_uninterrupted_run(tmp_path):
    """N steps straight against N/2, stop (inside an epoch), resume, N/2: identical weights on CPU float32."""
    data = write_dataset(tmp_path / "d", labelled=8, unlabelled=2)
    cfg = tiny_config(**{"schedule.epochs": 3, "optim.warmup_steps": 2})
    per_epoch = steps_per_epoch(6, 1, 2, 1)
    assert per_epoch == 3
    full = tmp_path / "full"
    train(cfg, data, full)
    halves = tmp_path / "halves"
    train(cfg, data, halves, stop_at=4)  # epoch 2, one of its three steps done
    stopped = load_checkpoint(halves / LAST)
    assert (stopped["epoch"], stopped["step"], stopped["epoch_step"]) == (1, 4, 1)
    assert stopped["schedule"] == {"step": 4, "total_steps": 9, "warmup_steps": 2}
    train(cfg, data, halves, resume=True)
    a, b = load_checkpoint(full / LAST), load_checkpoint(halves / LAST)
    assert a["step"] == b["step"] == 9 and b["epoch_step"] == 0
    assert _states_equal(a["student"], b["student"]) and _states_equal(a["teacher"], b["teacher"])
    assert a["optimizer"]["state"][0]["step"] == b["optimizer"]["state"][0]["step"]


def test_checkpoints_come_within_an_epoch_when_their_time_is_due(tmp_path):
    data = write_dataset(tmp_path / "d", labelled=8, unlabelled=2)
    cfg = tiny_config(**{"schedule.epochs": 1, "runtime.checkpoint_minutes": 1e-9})
    with logged("training.trainer") as lines:
        train(cfg, data, tmp_path / "run")
    mid = [line for line in lines if line.startswith("checkpoint at step")]
    assert mid == ["checkpoint at step 1 (epoch 1, 1 of its steps done)",
                   "checkpoint at step 2 (epoch 1, 2 of its steps done)"]  # step 3 ends the epoch: its own save


def test_checkpoint_holds_the_agreed_keys(tmp_path):
    data = write_dataset(tmp_path / "d", labelled=3, unlabelled=1)
    cfg = tiny_config(**{"schedule.epochs": 1, "teacher.warmup_epochs": 0, "validation.every_epochs": 1})
    best = train(cfg, data, tmp_path / "run")
    assert best == tmp_path / "run" / BEST and best.exists()
    ckpt = load_checkpoint(best)
    for key in ("student", "teacher", "model_config", "preset", "config", "epoch", "step", "epoch_step", "schedule",
                "optimizer",
                "scheduler", "scaler", "rng", "metrics", "data", "init_onnx"):
        assert key in ckpt, key
    assert ckpt["init_onnx"] is None  # a run from scratch
    assert ckpt["model_config"]["decoder_channels"] == (8, 8, 8, 8, 8)
    assert TrainConfig.from_dict(ckpt["config"]) == cfg
    assert ckpt["data"]["labelled"] == 2 and ckpt["data"]["validation"] == 1 and ckpt["data"]["unlabelled"] == 1
    assert 0.0 <= ckpt["metrics"]["val_f1"] <= 1.0 and ckpt["metrics"]["best_val_f1"] == ckpt["metrics"]["val_f1"]
    net = MT2Net(cfg.model)
    net.load_state_dict(ckpt["teacher"])


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train(tiny_config(**{"runtime.device": "cpu"}), Path(data), Path(out))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_run(tmp_path):
    data = write_dataset(tmp_path / "d", labelled=5, unlabelled=2)
    out = tmp_path / "run"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(data), str(out)), nprocs=2, join=True)
    ckpt = load_checkpoint(out / LAST)
    # 4 training images over 2 ranks of batch 2: one step per epoch, both ranks in lock-step.
    assert ckpt["epoch"] == 2 and ckpt["step"] == 2 * steps_per_epoch(4, 1, 2, 2) == 2
    assert ckpt["teacher"] is not None
    assert len((out / "log.csv").read_text().splitlines()) == 3  # header + one row per epoch, rank 0 only



def test_validation_shows_images_at_the_trained_diameter():
    sized = tiny_config(**{"augment.diameter": 20.0, "validation.scales": [0.8, 1.0]})
    assert validation_plan(10.0, sized).scales == pytest.approx((1.6, 2.0))  # 10 px objects seen at 16 and 20 px
    assert validation_plan(200.0, sized).scales == pytest.approx((0.2, 0.25))  # base scale clipped at 0.25
    assert validation_plan(None, sized).scales == (0.8, 1.0)  # no whole labelled object: native size
    assert validation_plan(10.0, tiny_config(**{"validation.scales": [0.8, 1.0]})).scales == (0.8, 1.0)  # off
