"""The MT2 training loop: supervised warm-up, then Mean Teacher; validation, checkpoints, resume, DDP.

One optimiser step takes a batch of labelled crops (strong views, CutMix on images and targets) and, once
the teacher exists, a batch of unlabelled crops: the teacher predicts the weak views, the student the
strong views (CutMix applied to the strong views and, with the same boxes, to the teacher's maps). Both
batches go through the student in one forward pass; the consistency loss sees only the unlabelled rows.

Every random choice is a pure function of (seed, epoch, position) or (seed, step), so a run resumed from
its last checkpoint (written at the end of every epoch and, within an epoch, every
`runtime.checkpoint_minutes`) repeats exactly the steps an uninterrupted run would take. Under torchrun each
rank trains on its own share of every epoch; all ranks keep an identical teacher (the EMA of identical,
all-reduced student weights), while validation, logs and checkpoints happen on rank 0 only.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from app.config import CONTRACT, InferenceConfig
from app.infer import Plan, predict_maps
from app.logs import silence
from app.manifest import sha256_file
from training.augment import apply_cutmix, base_scale, cutmix_boxes
from training.checkpoint import load_checkpoint, network_state, save_checkpoint
from training.config import RuntimeConfig, TrainConfig
from training.data import (
    EpochSampler,
    LabelledCrops,
    Prepared,
    UnlabelledCrops,
    open_array,
    prepare_all,
    sampling_probabilities,
    split_sources,
)
from training.losses import total_loss
from training.mean_teacher import ema_update, make_teacher, teacher_probabilities
from training.model import MT2Net
from training.onnx_weights import load_onnx_weights
from training.schedule import make_scheduler, schedule_record, step_budget
from training.torch_runner import TorchRunner

LAST, BEST, LOG = "last.pt", "best.pt", "log.csv"
CALIBRATION_CROPS = 16  # labelled crops whose statistics re-seed the BatchNorms of a model loaded from ONNX
LOSS_TERMS = ("total", "cls", "cell", "boundary", "consistency")
log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class Dist:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> tuple[Dist, bool]:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, Gloo on CPU).

    Returns the placement and whether this call created the group (and so must destroy it).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), False
    place = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if dist.is_initialized():
        return place, False
    backend = "nccl" if device_kind == "cuda" else "gloo"
    # Data preparation on rank 0 may take long on the full challenge set; the others wait at a barrier.
    dist.init_process_group(backend, timeout=timedelta(hours=3))
    return place, True


def select_device(kind: str, place: Dist) -> torch.device:
    """"auto" picks CUDA when present; under DDP each rank takes its local GPU."""
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("runtime.device is cuda but no CUDA device is available")
        torch.cuda.set_device(place.local_rank)
        return torch.device("cuda", place.local_rank)
    return torch.device("cpu")


def barrier(place: Dist) -> None:
    if place.world > 1:
        dist.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def load_encoder_weights(net: MT2Net, path: Path) -> int:
    """Copy a torchvision-style state dict (e.g. ImageNet ResNet) into the encoder; returns tensors loaded.

    Keys the encoder lacks (the classifier) are ignored; a file that matches no encoder tensor is refused.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = net.encoder.state_dict()
    usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not usable:
        raise ValueError(f"{Path(path).name}: no tensor matches the {net.config.encoder} encoder")
    net.encoder.load_state_dict(usable, strict=False)
    return len(usable)


def build_optimizer(net: MT2Net, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with the encoder at `encoder_lr` and the decoder and heads at `lr`."""
    encoder = [p for p in net.encoder.parameters() if p.requires_grad]
    encoder_ids = {id(p) for p in encoder}
    rest = [p for p in net.parameters() if p.requires_grad and id(p) not in encoder_ids]
    return torch.optim.AdamW(
        [{"params": encoder, "lr": cfg.optim.encoder_lr}, {"params": rest, "lr": cfg.optim.lr}],
        weight_decay=cfg.optim.weight_decay,
    )


def autocast(device: torch.device, runtime: RuntimeConfig) -> AbstractContextManager:
    """Mixed precision of the forward passes: float16 on CUDA (`amp`), bfloat16 on the CPU (`cpu_bf16`)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16, enabled=runtime.amp)
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=runtime.cpu_bf16)


def memory_layout(batch: torch.Tensor, runtime: RuntimeConfig) -> torch.Tensor:
    """A batch in the network's memory order (channels last when `runtime.channels_last`)."""
    return batch.contiguous(memory_format=torch.channels_last) if runtime.channels_last else batch


def validation_config(cfg: TrainConfig) -> InferenceConfig:
    """The app's InferenceConfig for validation: configured scales, window = crop unless set; one pass as in the
    app, unless the encoder is deeper than its padding allows (inputs must be multiples of 2^depth)."""
    window = cfg.validation.window or cfg.augment.crop
    stride = cfg.validation.stride or max(window // 2, 1)
    one_pass = InferenceConfig.one_pass_max_side if CONTRACT.size_multiple % 2**cfg.model.encoder_depth == 0 else 0
    return InferenceConfig(
        scales=cfg.validation.scales, window=window, stride=stride, batch_size=cfg.validation.batch_size,
        one_pass_max_side=one_pass,
    )


# ---------------------------------------------------------------------------------------- checkpoints


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------- validation


def validation_plan(diameter: float | None, cfg: TrainConfig) -> Plan:
    """How validation looks at an image whose labelled objects are `diameter` px across: the validation scales,
    times the base scale of `augment.diameter` (its labelled diameter standing in for the app's estimate), so
    validation sees objects at the sizes training showed them."""
    icfg = validation_config(cfg)
    base = base_scale(diameter, cfg.augment)
    return Plan(tuple(scale * base for scale in icfg.scales), icfg.stride, flips=icfg.flips)


def validate(net: nn.Module, samples: list[Prepared], cfg: TrainConfig, device: torch.device) -> float:
    """Mean F1 over validation images through the app's sliding windows, post-processing and metric, each image
    at its `validation_plan`."""
    from app.metric import image_scores
    from app.postprocess import instance_map

    icfg = validation_config(cfg)
    runner = TorchRunner(unwrap(net), device, amp=cfg.runtime.amp)
    limit = cfg.validation.max_images or len(samples)
    f1s = []
    for sample in samples[:limit]:
        assert sample.labels is not None  # validation samples are prepared with labels
        image = np.asarray(open_array(sample.image))
        gt = np.asarray(open_array(sample.labels))
        plan = validation_plan(sample.diameter, cfg)
        cell, boundary = predict_maps(image, runner, plan, icfg)
        f1s.append(image_scores(gt, instance_map(cell, boundary, icfg, plan.view_scale)).f1)
    return float(np.mean(f1s)) if f1s else float("nan")


# ------------------------------------------------------------------------------------------------ step


def train_step(
    student: nn.Module,
    teacher: nn.Module | None,
    labelled: dict[str, torch.Tensor],
    unlabelled: dict[str, torch.Tensor] | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    cfg: TrainConfig,
    step: int,
    device: torch.device,
) -> dict[str, float]:
    """One optimiser step (and EMA update when the teacher exists); returns the loss terms as floats."""
    rng = np.random.default_rng([cfg.runtime.seed, 2, step])
    crop = labelled["image"].shape[-1]
    boxes = cutmix_boxes(rng, labelled["image"].shape[0], crop, cfg.augment.cutmix_p)
    images = memory_layout(apply_cutmix(labelled["image"], boxes), cfg.runtime).to(device, non_blocking=True)
    cls = apply_cutmix(labelled["cls"], boxes).to(device, non_blocking=True)
    cell = apply_cutmix(labelled["cell"], boxes).to(device, non_blocking=True)
    boundary = apply_cutmix(labelled["boundary"], boxes).to(device, non_blocking=True)
    n_labelled = images.shape[0]
    teacher_maps = None
    if teacher is not None and unlabelled is not None:
        with autocast(device, cfg.runtime):
            weak = memory_layout(unlabelled["weak"], cfg.runtime).to(device, non_blocking=True)
            teacher_maps = teacher_probabilities(teacher, weak)
        u_boxes = cutmix_boxes(rng, unlabelled["strong"].shape[0], crop, cfg.augment.cutmix_p)
        strong = apply_cutmix(unlabelled["strong"], u_boxes).to(device, non_blocking=True)
        teacher_maps = {k: apply_cutmix(v.contiguous(), u_boxes) for k, v in teacher_maps.items()}
        images = memory_layout(torch.cat([images, strong]), cfg.runtime)
    student.train()
    with autocast(device, cfg.runtime):
        outputs = student(images)
    terms = total_loss(outputs, n_labelled, cls, cell, boundary, teacher_maps, cfg.loss)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(terms["total"]).backward()
    if cfg.optim.grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(student.parameters(), cfg.optim.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    if teacher is not None:
        ema_update(teacher, unwrap(student), cfg.teacher.ema_decay, cfg.teacher.ema_buffers)
    return {name: float(terms[name].detach()) for name in LOSS_TERMS}


# ------------------------------------------------------------------------------------------------ logs


class CsvLog:
    """One row per epoch in RUN_DIR/log.csv (appended on resume), mirrored to TensorBoard when installed."""

    FIELDS = (
        ("epoch", "step", "lr", "seconds", "sec_per_step", "cpu_sec_per_step")
        + tuple(f"loss_{t}" for t in LOSS_TERMS)
        + ("val_f1", "teacher")
    )

    def __init__(self, out_dir: Path, tensorboard: bool) -> None:
        self.path = out_dir / LOG
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out_dir / "tensorboard"))
            except ImportError:
                self.writer = None

    def write(self, row: dict[str, Any]) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.FIELDS)
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in self.FIELDS})
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("epoch", "step") and not math.isnan(value):
                    self.writer.add_scalar(key, value, row["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# ------------------------------------------------------------------------------------------------ train


@dataclass
class Datasets:
    labelled: list[Prepared]
    unlabelled: list[Prepared]
    validation: list[Prepared]
    problems: list[str]

    def summary(self, data_dirs: list[Path], seed: int) -> dict[str, Any]:
        return {
            "dir": ",".join(d.name for d in data_dirs),
            "labelled": len(self.labelled),
            "unlabelled": len(self.unlabelled),
            "validation": len(self.validation),
            "seed": seed,
            "skipped": list(self.problems),
        }


def prepare_data(cfg: TrainConfig, data_dirs: list[Path], cache: Path, place: Dist) -> Datasets:
    """Split, check and cache every file before training starts; rank 0 works, the others reuse its cache."""
    split = split_sources(data_dirs, cfg.data)
    norm = InferenceConfig()
    for problem in split.problems:
        log.warning(problem)
    use_unlabelled = cfg.teacher.semi_supervised
    result: Datasets | None = None
    for turn in ("main", "others"):
        if (turn == "main") == place.main:
            labelled, p1 = prepare_all(split.labelled, cache, cfg.data, cfg.targets, norm, False)
            validation, p2 = prepare_all(split.validation, cache, cfg.data, cfg.targets, norm, True)
            unlabelled, p3 = (
                prepare_all(split.unlabelled, cache, cfg.data, cfg.targets, norm, False)
                if use_unlabelled
                else ([], [])
            )
            if use_unlabelled and cfg.data.labelled_as_unlabelled:
                again = [Prepared(p.name, p.image, source=p.source, diameter=p.diameter) for p in labelled]
                unlabelled = unlabelled + again
            result = Datasets(labelled, unlabelled, validation, split.problems + p1 + p2 + p3)
        barrier(place)
    assert result is not None
    if not result.labelled:
        raise ValueError(f"{', '.join(d.name for d in data_dirs)}: no usable labelled image (images/ + labels/)")
    return result


def train(
    cfg: TrainConfig,
    data_dir: Path | list[Path] | None,
    out_dir: Path,
    resume: bool = False,
    encoder_weights: Path | None = None,
    init_onnx: Path | None = None,
    start_step: int = 0,
    stop_at: int | None = None,
) -> Path:
    """Train per `cfg` on the challenge-layout `data_dir`, writing RUN_DIR files; returns the best checkpoint.

    With `resume`, continues from ``out_dir/last.pt`` (the checkpoint's own config wins for the model). With
    `init_onnx`, a new run starts from the weights of an exported fp32 model (training/onnx_weights.py), at
    `start_step` of its schedule when that is above 0 (a run taken up from exported weights,
    training/schedule.py). `stop_at` ends the run after that step with a checkpoint, the schedule unchanged.
    """
    extra = [] if data_dir is None else [data_dir] if isinstance(data_dir, (str, Path)) else list(data_dir)
    data_dirs = data_folders(cfg, [Path(d) for d in extra])
    out_dir = Path(out_dir)
    device_kind = "cuda" if cfg.runtime.device == "auto" and torch.cuda.is_available() else cfg.runtime.device
    place, owns_group = init_distributed("cuda" if device_kind == "cuda" else "cpu")
    if not place.main:
        silence("training")  # one process speaks for the run
    try:
        return _train(cfg, data_dirs, out_dir, resume, encoder_weights, init_onnx, place, start_step, stop_at)
    finally:
        if owns_group:
            dist.destroy_process_group()


def start_weights(
    net: MT2Net,
    crops: LabelledCrops,
    device: torch.device,
    encoder_weights: Path | None,
    init_onnx: Path | None,
) -> dict[str, Any] | None:
    """Weights of a fresh run: an exported ONNX file (BatchNorms calibrated on the first labelled crops; its
    name, sha256 and parity are returned for the checkpoint), else ImageNet encoder weights, else random."""
    if init_onnx is not None:
        count = min(len(crops), CALIBRATION_CROPS)
        batch = torch.stack([crops[(i, 0, i)]["image"] for i in range(count)])
        measured = load_onnx_weights(net, Path(init_onnx), batch)
        log.info("weights: %s loaded, BatchNorm calibrated on %d crops, parity %.1e", Path(init_onnx).name, count,
                 measured)
        return {"file": Path(init_onnx).name, "sha256": sha256_file(init_onnx), "parity": measured}
    if encoder_weights is not None:
        count = load_encoder_weights(net.to(device), Path(encoder_weights))
        log.info(f"encoder: {count} tensors loaded from {Path(encoder_weights).name}")
    else:
        log.warning("no --encoder-weights given: the encoder starts from random weights")
    return None


@dataclass
class Position:
    """Where a run stands: completed epochs, optimiser steps, steps already taken in the current epoch."""

    epoch: int = 0
    step: int = 0
    epoch_step: int = 0


def restore(
    checkpoint: dict[str, Any], net: nn.Module, optimizer: Any, scheduler: Any, scaler: Any
) -> tuple[nn.Module | None, Position, float | None]:
    """Load a run's state from its checkpoint into the live objects: (teacher or None, position, best F1)."""
    net.load_state_dict(checkpoint["student"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    teacher = None
    if checkpoint["teacher"] is not None:
        teacher = make_teacher(net)
        teacher.load_state_dict(checkpoint["teacher"])
    set_rng_state(checkpoint["rng"])
    position = Position(int(checkpoint["epoch"]), int(checkpoint["step"]), int(checkpoint.get("epoch_step", 0)))
    return teacher, position, checkpoint["metrics"].get("best_val_f1")


def log_sources(folders: list[Path], sources: list[int], probs: np.ndarray | None) -> None:
    """One line per data folder: its labelled images and their share of the labelled draws."""
    for index, folder in enumerate(folders):
        mine = [source == index for source in sources]
        share = probs[mine].sum() if probs is not None else sum(mine) / max(1, len(sources))
        log.info(f"source {folder.name}: {sum(mine)} labelled image(s), {share:.0%} of labelled draws")


def validate_if_due(
    model: nn.Module,
    samples: list[Prepared],
    cfg: TrainConfig,
    device: torch.device,
    epoch: int,
    last_epoch: bool,
    best: float | None,
) -> tuple[float | None, bool]:
    """Validation F1 after `epoch` when it is due (every `validation.every_epochs` and after the last), else None;
    and whether this checkpoint is the best so far (always, when there are no validation images)."""
    every = cfg.validation.every_epochs
    if not (samples and every > 0 and (epoch % every == 0 or last_epoch)):
        return None, not samples
    f1 = validate(model, samples, cfg, device)
    return f1, best is None or f1 > best


def run_epoch(
    student: nn.Module,
    teacher: nn.Module | None,
    loader: Any,
    unlabelled_iter: Any,
    optimizer: Any,
    scheduler: Any,
    scaler: Any,
    cfg: TrainConfig,
    device: torch.device,
    step: int,
    epoch_steps: int,
    bar: tqdm,
    after_step: Callable[[int, int], bool] | None = None,
) -> tuple[int, int, dict[str, float]]:
    """Up to `epoch_steps` steps on the labelled loader's batches (with the unlabelled stream once there is a
    teacher): (the step count after them, the steps done, each loss term summed over them). `after_step(step,
    done)` runs after every step (mid-epoch checkpoints) and ends the epoch early when it returns True."""
    sums = {name: 0.0 for name in LOSS_TERMS}
    done = 0
    for batch in loader:
        if done >= epoch_steps:
            break
        unlabelled = next(unlabelled_iter) if unlabelled_iter is not None else None
        terms = train_step(student, teacher, batch, unlabelled, optimizer, scheduler, scaler, cfg, step, device)
        step += 1
        done += 1
        for name in LOSS_TERMS:
            sums[name] += terms[name]
        bar.set_postfix({k[:4]: f"{v:.3f}" for k, v in terms.items()}, refresh=False)
        bar.update(1)
        if after_step is not None and after_step(step, done):
            break
    return step, done, sums


def epoch_row(
    epoch: int, step: int, lr: float, seconds: float, cpu_seconds: float, done: int, sums: dict[str, float],
    has_teacher: bool, val_f1: float | None,
) -> dict[str, Any]:
    """The log.csv row of one epoch: timing per step, mean loss terms, validation F1 ("" when not run)."""
    row = {"epoch": epoch, "step": step, "lr": lr, "seconds": round(seconds, 3),
           "sec_per_step": round(seconds / max(done, 1), 4),
           "cpu_sec_per_step": round(cpu_seconds / max(done, 1), 4), "teacher": int(has_teacher),
           "val_f1": val_f1 if val_f1 is not None else ""}
    row.update({f"loss_{k}": v / max(done, 1) for k, v in sums.items()})
    return row


def _train(
    cfg: TrainConfig,
    data_dirs: list[Path],
    out_dir: Path,
    resume: bool,
    encoder_weights: Path | None,
    init_onnx: Path | None,
    place: Dist,
    start_step: int = 0,
    stop_at: int | None = None,
) -> Path:
    if cfg.runtime.threads > 0:
        torch.set_num_threads(cfg.runtime.threads)
    device = select_device(cfg.runtime.device, place)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = load_checkpoint(out_dir / LAST) if resume else None
    if checkpoint is not None:
        stored = checkpoint["config"]
        cfg = TrainConfig.from_dict({
            **stored, "schedule": asdict(cfg.schedule), "runtime": asdict(cfg.runtime),
            "data": {**stored["data"], "num_workers": cfg.data.num_workers},  # how data loads is not the recipe
        })
    cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir else out_dir / "cache"
    data = prepare_data(cfg, data_dirs, cache, place)
    log.info(
        f"data: {len(data.labelled)} labelled, {len(data.unlabelled)} unlabelled, {len(data.validation)} validation"
        f" image(s); {len(data.problems)} skipped"
    )

    torch.manual_seed(cfg.runtime.seed)
    net = MT2Net(cfg.model)
    labelled_set = LabelledCrops(data.labelled, cfg.augment, cfg.runtime.seed)
    if checkpoint is not None:
        started_from = checkpoint.get("init_onnx")
    else:
        started_from = start_weights(net, labelled_set, device, encoder_weights, init_onnx)
    net = net.to(device)
    if cfg.runtime.channels_last:
        net = net.to(memory_format=torch.channels_last)
    student: nn.Module = net
    if place.world > 1:
        student = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(net, cfg)
    steps, total_steps = step_budget(cfg, len(data.labelled), place.world)
    scheduler = make_scheduler(optimizer, cfg, total_steps, start_step if checkpoint is None else 0)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.runtime.amp and device.type == "cuda")
    teacher: nn.Module | None = None
    at, best_f1 = Position(), None
    if checkpoint is not None:
        teacher, at, best_f1 = restore(checkpoint, net, optimizer, scheduler, scaler)
        log.info(f"resumed from {LAST} at epoch {at.epoch}, step {at.step}")
    elif start_step > 0:  # taken up from exported weights: they are student and teacher, the schedule goes on
        at = Position(start_step // steps, start_step, start_step % steps)
        if cfg.teacher.semi_supervised:
            teacher = make_teacher(net)
        log.info(f"schedule taken up at step {start_step} of {total_steps}, learning rate "
                 f"{scheduler.get_last_lr()[-1]:.3g}; the loaded weights are student and teacher")

    csv_log = CsvLog(out_dir, cfg.runtime.tensorboard) if place.main else None
    metrics: dict[str, Any] = {"val_f1": None, "best_val_f1": best_f1}

    def payload() -> dict[str, Any]:
        return {
            **network_state(net, teacher, cfg),
            "epoch": at.epoch,
            "step": at.step,
            "epoch_step": at.epoch_step,
            "schedule": schedule_record(at.step, total_steps, cfg),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
            "metrics": dict(metrics),
            "data": data.summary(data_dirs, cfg.data.seed),
            "init_onnx": started_from,
        }

    if checkpoint is None and start_step == 0 and place.main and data.validation and cfg.validation.every_epochs > 0:
        start_f1 = validate(net, data.validation, cfg, device)
        log.info(f"validation F1 before training: {start_f1:.4f}")
        assert csv_log is not None  # the main process keeps the log
        csv_log.write({"epoch": 0, "step": 0, "val_f1": start_f1, "teacher": 0})
    barrier(place)

    unlabelled_set = UnlabelledCrops(data.unlabelled, cfg.augment, cfg.runtime.seed)
    labelled_probs = sampling_probabilities([p.source for p in data.labelled], cfg.data.weights)
    unlabelled_probs = sampling_probabilities([p.source for p in data.unlabelled], cfg.data.weights)
    if place.main and len(data_dirs) > 1:
        log_sources(data_dirs, [p.source for p in data.labelled], labelled_probs)
    semi = cfg.teacher.semi_supervised and len(data.unlabelled) > 0
    if cfg.teacher.semi_supervised and not data.unlabelled:
        log.warning("semi_supervised is on but there are no unlabelled images; training supervised only")
    best_path = out_dir / BEST
    last_saved = time.monotonic()
    end = total_steps if stop_at is None else min(stop_at, total_steps)

    def after_step(step: int, done: int) -> bool:
        """Mid-epoch checkpoint when one is due; True when the run must stop here (`stop_at`)."""
        nonlocal last_saved
        stopping = step >= end
        due = time.monotonic() - last_saved >= cfg.runtime.checkpoint_minutes * 60
        if (due or (stopping and end < total_steps)) and place.main:
            at.step, at.epoch_step = step, first + done
            if at.epoch_step < steps:  # the end of the epoch writes its own checkpoint
                save_checkpoint(out_dir / LAST, payload())
                last_saved = time.monotonic()
                log.info("checkpoint at step %d (epoch %d, %d of its steps done)", step, at.epoch + 1, at.epoch_step)
        return stopping

    while at.epoch < cfg.schedule.epochs and at.step < end:
        if semi and teacher is None and at.epoch >= cfg.teacher.warmup_epochs:
            teacher = make_teacher(net)
            log.info(f"warm-up over after {at.epoch} epoch(s): teacher copied from the student")
        first = at.epoch_step
        epoch_steps = min(steps - first, end - at.step)
        labelled_loader = make_loader(labelled_set, cfg, steps, at.epoch, 0, cfg.schedule.batch_size, place,
                                  labelled_probs, first)
        unlabelled_iter = (
            iter(make_loader(unlabelled_set, cfg, steps, at.epoch, 1, cfg.schedule.unlabelled_batch_size, place,
                         unlabelled_probs, first))
            if teacher is not None
            else None
        )
        started, cpu_started = time.perf_counter(), time.process_time()
        bar = tqdm(total=epoch_steps, desc=f"epoch {at.epoch + 1}/{cfg.schedule.epochs}", leave=False,
                   disable=not (cfg.runtime.progress and place.main), file=sys.stderr)
        at.step, done, sums = run_epoch(student, teacher, labelled_loader, unlabelled_iter, optimizer, scheduler,
                                        scaler, cfg, device, at.step, epoch_steps, bar, after_step)
        bar.close()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        if first + done < steps and at.step < total_steps:  # stopped inside the epoch (`stop_at`): saved already
            break
        at.epoch, at.epoch_step = at.epoch + 1, 0
        last_epoch = at.epoch >= cfg.schedule.epochs or at.step >= total_steps
        metrics["val_f1"] = None
        if place.main:
            metrics["val_f1"], improved = validate_if_due(
                teacher if teacher is not None else net, data.validation, cfg, device, at.epoch, last_epoch,
                metrics["best_val_f1"],
            )
            if metrics["val_f1"] is not None and improved:
                metrics["best_val_f1"] = metrics["val_f1"]
            row = epoch_row(at.epoch, at.step, float(scheduler.get_last_lr()[-1]), seconds, cpu_seconds, done, sums,
                            teacher is not None, metrics["val_f1"])
            assert csv_log is not None
            csv_log.write(row)
            state = payload()
            save_checkpoint(out_dir / LAST, state)
            last_saved = time.monotonic()
            if improved or not best_path.exists():
                save_checkpoint(best_path, state)
            val_text = f", val F1 {metrics['val_f1']:.4f}" if metrics["val_f1"] is not None else ""
            log.info("epoch %d: step %d, loss %.4f, %.3f s/step%s", at.epoch, at.step, row["loss_total"],
                     row["sec_per_step"], val_text)
        barrier(place)
    if csv_log is not None:
        csv_log.close()
    if data.problems:
        log.warning(f"skipped {len(data.problems)} file(s):\n" + "\n".join(f"  {problem}" for problem in data.problems))
    return best_path


def data_folders(cfg: TrainConfig, extra: list[Path]) -> list[Path]:
    """The run's labelled folders: the config's `data.sources`, then folders given on the command line."""
    folders = [Path(name) for name in cfg.data.sources] + [d for d in extra if str(d) not in cfg.data.sources]
    if not folders:
        raise ValueError("no data folder: give --data DIR or set data.sources")
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise FileNotFoundError(f"data folder not found: {', '.join(missing)}")
    if cfg.data.weights and len(cfg.data.weights) != len(folders):
        raise ValueError(f"data.weights has {len(cfg.data.weights)} value(s) for {len(folders)} data folder(s)")
    return folders


def make_loader(
    dataset, cfg: TrainConfig, steps: int, epoch: int, stream: int, batch: int, place: Dist,
    probs: np.ndarray | None = None, first_step: int = 0,
) -> DataLoader:
    """The batches of one epoch of `stream` (0 labelled, 1 unlabelled) from `first_step` on, this rank's share."""
    sampler = EpochSampler(len(dataset), batch, steps, epoch, cfg.runtime.seed, stream, place.rank, place.world, probs,
                           first_step)
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


__all__ = [
    "BEST",
    "LAST",
    "LOG",
    "CsvLog",
    "Dist",
    "autocast",
    "build_optimizer",
    "init_distributed",
    "load_encoder_weights",
    "make_loader",
    "prepare_data",
    "start_weights",
    "select_device",
    "train",
    "train_step",
    "validate",
    "validation_config",
]
