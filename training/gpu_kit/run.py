"""Train for a given number of minutes from a kit, with the data and the augmentation on the device.

The recipe is the preset's (by default the kit's, `long`: the shipped MobileNetV2 UNet++, crops of 256 px,
real sources weighted, stain augmentation, Mean Teacher from the first step), with `GpuRecipe`'s batch and
learning-rate schedule for a GPU: 32 labelled + 16 unlabelled crops per step (the preset's two to one), the
peak learning rate raised with the batch, a linear warm-up, then one cosine that ends when the time does.
The length of that cosine is planned from measured speed: the first `probe_steps` steps are timed, the number of
steps that fit the remaining minutes is planned, and the estimate is renewed at every report during the first
half. Each step is `training.trainer.train_step`'s: CutMix on the batch, the teacher's maps of the weak views,
one forward pass of the student over labelled and strong unlabelled crops under bfloat16 autocast in
channels-last layout, `training.losses.total_loss`, AdamW, the EMA update of `training.mean_teacher`.

The run folder gets `gpu.pt` (the trainer's checkpoint format without optimiser state: student, teacher,
model_config, config, step, schedule, ...; written every `checkpoint_minutes` and at the end), `curve.csv` (the
learning curve, one row per report) and `run.json` (device, minutes, steps, speed, data, where it started).
SIGTERM or SIGINT end the run early with its checkpoint.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import logging
import math
import os
import signal
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from app.config import CONTRACT
from app.manifest import sha256_file
from app.writer import write_text
from training.augment import apply_cutmix, cutmix_boxes
from training.checkpoint import load_checkpoint, network_state, save_checkpoint
from training.config import TrainConfig, load_config
from training.data import sampling_probabilities, steps_per_epoch
from training.gpu_kit.gpu_augment import labelled_batch, unlabelled_batch
from training.gpu_kit.layout import read_manifest
from training.gpu_kit.pool import DevicePool, build_pool, describe
from training.losses import total_loss
from training.mean_teacher import ema_update, make_teacher, teacher_probabilities
from training.model import MT2Net
from training.onnx_weights import load_onnx_weights
from training.schedule import lr_factor, schedule_record
from training.trainer import CALIBRATION_CROPS, build_optimizer, memory_layout

log = logging.getLogger(__name__)

CHECKPOINT, CURVE, SUMMARY = "gpu.pt", "curve.csv", "run.json"
LOSS_TERMS = ("total", "cls", "cell", "boundary", "consistency")
CURVE_FIELDS = ("step", "seconds", "lr", "sec_per_step", "crops_per_s", "teacher") + tuple(f"loss_{t}" for t in
                                                                                        LOSS_TERMS)
UNPLANNED = 10**9  # the schedule's length before the speed is known: the cosine stays at its peak meanwhile


@dataclass(frozen=True)
class GpuRecipe:
    """What the kit changes in the preset for a GPU, and how the run plans and reports its time."""

    batch_size: int = 32
    unlabelled_batch_size: int = 16
    lr: float = 1e-3  # the long preset's 5e-4 at 4 + 2 crops, raised less than the batch (AdamW)
    encoder_lr: float = 1e-3
    warmup_steps: int = 200
    probe_steps: int = 30  # steps timed before the schedule's length is planned
    probe_skip: int = 5  # first steps left out of that timing (cuDNN autotuning, allocator warm-up)
    replan_share: float = 0.5  # the planned length is renewed at each report until this share of the time
    safety: float = 0.98  # share of the remaining time the plan fills
    report_seconds: float = 30.0
    checkpoint_minutes: float = 2.0

    def overrides(self) -> dict[str, Any]:
        return {
            "schedule.batch_size": self.batch_size,
            "schedule.unlabelled_batch_size": self.unlabelled_batch_size,
            "optim.lr": self.lr,
            "optim.encoder_lr": self.encoder_lr,
            "optim.warmup_steps": self.warmup_steps,
            "runtime.channels_last": True,
            "runtime.threads": 0,  # the CPU's own default: the preset's 2 suit a shared two-core machine
            "runtime.progress": False,
            "runtime.tensorboard": False,
            "data.cache_dir": "",
        }


@dataclass(frozen=True)
class RunOptions:
    """One run from a kit."""

    kit: Path
    out: Path
    minutes: float
    device: str = "auto"
    config: str | None = None  # preset name or TOML file; None: the kit's preset
    overrides: dict[str, Any] = field(default_factory=dict)
    init_onnx: Path | None = None
    continue_from: Path | None = None
    max_steps: int = 0  # 0: as many as the minutes allow
    workers: int = 0  # processes and threads reading the kit and making targets; 0: the CPU count
    amp: bool = True  # bfloat16 autocast of the forward passes
    recipe: GpuRecipe = GpuRecipe()


# --- setup -----------------------------------------------------------------------------------------------------


def pick_device(kind: str) -> torch.device:
    """auto: CUDA when present; cuda without a GPU is an error."""
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch sees no CUDA device")
    if kind not in ("cuda", "cpu"):
        raise ValueError(f"--device must be auto, cuda or cpu, got {kind!r}")
    return torch.device(kind)


def run_config(options: RunOptions, manifest: dict[str, Any], device: torch.device) -> TrainConfig:
    """The preset with the GPU recipe and then the caller's overrides; the kit's folders as data sources."""
    names = [record["name"] for record in manifest["sources"]]
    changes = {**options.recipe.overrides(), "data.sources": names, "runtime.device": device.type,
               "runtime.amp": options.amp, **options.overrides}
    if options.max_steps:
        changes["schedule.max_steps"] = options.max_steps
    cfg = load_config(options.config or manifest.get("preset", "long"), changes)
    if cfg.data.weights and len(cfg.data.weights) != len(names):
        raise ValueError(f"data.weights has {len(cfg.data.weights)} values for the kit's {len(names)} folders "
                         f"({', '.join(names)}); set them with --set data.weights=[...]")
    return cfg


def resolve_start(init_onnx: Path | None, continue_from: Path | None) -> tuple[Path | None, Path | None]:
    """(ONNX file, checkpoint) to start from: --continue-from names a checkpoint, or a folder holding gpu.pt or
    last.pt (a run folder) or mt2.fp32.onnx (a weights folder, taken as --init-onnx)."""
    if init_onnx is not None and continue_from is not None:
        raise ValueError("--init-onnx and --continue-from name different starting points: give one")
    if continue_from is None or Path(continue_from).is_file():
        return init_onnx, continue_from
    folder = Path(continue_from)
    for name in (CHECKPOINT, "last.pt"):
        if (folder / name).is_file():
            return None, folder / name
    if (folder / CONTRACT.fp32_file).is_file():
        return folder / CONTRACT.fp32_file, None
    raise FileNotFoundError(f"{folder.name}: holds no {CHECKPOINT}, last.pt or {CONTRACT.fp32_file}")


def autocast(device: torch.device, enabled: bool) -> AbstractContextManager:
    """bfloat16 autocast on either device (no loss scaling needed, unlike float16)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


# --- one step --------------------------------------------------------------------------------------------------


def train_step(
    student: nn.Module, teacher: nn.Module | None, labelled: dict[str, torch.Tensor],
    unlabelled: dict[str, torch.Tensor] | None, optimizer: torch.optim.Optimizer, cfg: TrainConfig,
    rng: np.random.Generator, amp: bool,
) -> dict[str, torch.Tensor]:
    """One optimiser step on device batches, as `training.trainer.train_step` takes it; the loss terms stay on
    the device (no synchronisation)."""
    device = labelled["image"].device
    crop = labelled["image"].shape[-1]
    boxes = cutmix_boxes(rng, labelled["image"].shape[0], crop, cfg.augment.cutmix_p)
    images = memory_layout(apply_cutmix(labelled["image"], boxes), cfg.runtime)
    cls, cell, boundary = (apply_cutmix(labelled[k], boxes) for k in ("cls", "cell", "boundary"))
    n_labelled = images.shape[0]
    teacher_maps = None
    if teacher is not None and unlabelled is not None:
        with autocast(device, amp):
            teacher_maps = teacher_probabilities(teacher, memory_layout(unlabelled["weak"], cfg.runtime))
        u_boxes = cutmix_boxes(rng, unlabelled["strong"].shape[0], crop, cfg.augment.cutmix_p)
        strong = apply_cutmix(unlabelled["strong"], u_boxes)
        teacher_maps = {k: apply_cutmix(v.contiguous(), u_boxes) for k, v in teacher_maps.items()}
        images = memory_layout(torch.cat([images, strong]), cfg.runtime)
    student.train()
    with autocast(device, amp):
        outputs = student(images)
    terms = total_loss(outputs, n_labelled, cls, cell, boundary, teacher_maps, cfg.loss)
    optimizer.zero_grad(set_to_none=True)
    terms["total"].backward()
    if cfg.optim.grad_clip > 0:
        nn.utils.clip_grad_norm_(student.parameters(), cfg.optim.grad_clip)
    optimizer.step()
    if teacher is not None:
        ema_update(teacher, student, cfg.teacher.ema_decay, cfg.teacher.ema_buffers)
    return {name: terms[name].detach() for name in LOSS_TERMS}


# --- time ------------------------------------------------------------------------------------------------------


def planned_steps(step: int, seconds_per_step: float, remaining: float, safety: float, cap: int) -> int:
    """The schedule's length: the steps done plus those that fit `safety` of the remaining seconds (at least one
    more), capped by `cap` (0: no cap)."""
    more = max(1, int(math.floor(max(remaining, 0.0) * safety / max(seconds_per_step, 1e-9))))
    total = step + more
    return min(total, cap) if cap > 0 else total


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StopFlag:
    """SIGTERM and SIGINT end the loop after the current step (the checkpoint is still written)."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: no handlers, the run ends on its own
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = True
        log.warning("signal %d: stopping after this step", signum)

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# --- records ---------------------------------------------------------------------------------------------------


class Curve:
    """curve.csv, one row per report, flushed as it goes (a killed run keeps its rows)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "w", newline="") as handle:
            csv.DictWriter(handle, fieldnames=CURVE_FIELDS).writeheader()

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=CURVE_FIELDS).writerow({k: row.get(k, "") for k in CURVE_FIELDS})


def versions() -> dict[str, str]:
    """Versions of the packages that shape the weights, for the checkpoint and the manifest."""
    out = {"torch": str(torch.__version__)}
    for name in ("segmentation-models-pytorch", "pytorch-msssim", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


# --- the run ---------------------------------------------------------------------------------------------------


def sampler(rng: np.random.Generator, items: list[int], probs: np.ndarray | None, count: int) -> Iterator[np.ndarray]:
    """Endless batches of `count` items drawn with `probs` (per-source weights) or uniformly, with replacement."""
    pool = np.asarray(items, np.int64)
    while True:
        yield pool[rng.choice(len(pool), size=count, p=probs)]


def train(options: RunOptions) -> dict[str, Any]:
    """Train from the kit for `options.minutes`; returns the run's summary (also written to run.json)."""
    setup_started = time.perf_counter()
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(options.kit)
    device = pick_device(options.device)
    cfg = run_config(options, manifest, device)
    init_onnx, resume = resolve_start(options.init_onnx, options.continue_from)
    workers = options.workers or _cpu_count()
    if cfg.runtime.threads > 0:
        torch.set_num_threads(cfg.runtime.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    host = build_pool(Path(options.kit), cfg, workers)
    labelled = host.labelled
    unlabelled = host.unlabelled(cfg.data.labelled_as_unlabelled)
    counts = describe(host, cfg.data.labelled_as_unlabelled)
    pool = DevicePool.upload(host, device)
    sources = list(host.sources)
    del host
    log.info(f"data on {device.type}: {len(labelled)} labelled, {len(unlabelled)} in the unlabelled stream, "
             f"{pool.nbytes() / 2**30:.2f} GiB")
    for row in counts:
        log.info(f"  {row['source']}: {row['labelled']} labelled, {row['unlabelled_stream']} unlabelled-stream")

    seed = cfg.runtime.seed
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 31])
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    net, teacher, started_from = start_networks(cfg, device, init_onnx, resume, pool, labelled, generator)
    semi = cfg.teacher.semi_supervised and len(unlabelled) > 0
    teacher_start = _teacher_start(cfg, len(labelled))
    optimizer = build_optimizer(net, cfg)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    probs_l = sampling_probabilities([sources[i] for i in labelled], cfg.data.weights)
    probs_u = sampling_probabilities([sources[i] for i in unlabelled], cfg.data.weights) if unlabelled else None
    draw_l = sampler(rng, labelled, probs_l, cfg.schedule.batch_size)
    draw_u = sampler(rng, unlabelled, probs_u, cfg.schedule.unlabelled_batch_size) if unlabelled else None
    setup_seconds = time.perf_counter() - setup_started
    log.info(f"setup {setup_seconds:.1f} s on {device_name(device)}; training for {options.minutes:g} min"
             + (f" or {options.max_steps} steps" if options.max_steps else ""))

    recipe = options.recipe
    cap = cfg.schedule.max_steps
    total = cap if cap > 0 else UNPLANNED
    curve = Curve(out / CURVE)
    sums = {name: torch.zeros((), device=device) for name in LOSS_TERMS}
    step = since = 0
    duration = options.minutes * 60.0
    started = time.perf_counter()
    deadline = started + duration
    probe_at: tuple[int, float] | None = None
    planned = False
    last_report = last_checkpoint = started
    report_step = 0

    def payload() -> dict[str, Any]:
        return {
            **network_state(net, teacher, cfg),
            "epoch": int(step * cfg.schedule.batch_size // max(len(labelled), 1)),
            "step": step,
            "epoch_step": 0,
            "schedule": schedule_record(step, total if total != UNPLANNED else step, cfg),
            "metrics": {"val_f1": None, "best_val_f1": None},
            "data": {"dir": "kit:" + ",".join(r["name"] for r in manifest["sources"]), "labelled": len(labelled),
                     "unlabelled": len(unlabelled), "validation": 0, "seed": cfg.data.seed, "skipped": []},
            "init_onnx": started_from,
            "versions": versions(),
            "gpu_kit": {"device": device_name(device), "minutes": options.minutes,
                        "seconds": round(time.perf_counter() - started, 1), "kit_created": manifest.get("created"),
                        "recipe": asdict(recipe)},
        }

    with StopFlag() as stop:
        while not stop.raised and (cap <= 0 or step < cap) and time.perf_counter() < deadline:
            if step >= total:
                break
            factor = lr_factor(step, total, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            if teacher is None and semi and step >= teacher_start:
                teacher = make_teacher(net)
            batch_l = labelled_batch(pool, next(draw_l), rng, cfg.augment, generator)
            batch_u = (unlabelled_batch(pool, next(draw_u), rng, cfg.augment, generator)
                       if teacher is not None and draw_u is not None else None)
            terms = train_step(net, teacher, batch_l, batch_u, optimizer, cfg, rng, options.amp)
            for name in LOSS_TERMS:
                sums[name] += terms[name].float()
            step += 1
            since += 1
            if step == recipe.probe_skip:
                synchronise(device)
                probe_at = (step, time.perf_counter())
            if step == recipe.probe_steps and probe_at is not None and not planned:
                synchronise(device)
                now = time.perf_counter()
                speed = (now - probe_at[1]) / (step - probe_at[0])
                total, planned = planned_steps(step, speed, deadline - now, recipe.safety, cap), True
                log.info(f"speed {speed:.3f} s/step: schedule planned for {total} steps")
            now = time.perf_counter()
            if now - last_report >= recipe.report_seconds:
                synchronise(device)
                now = time.perf_counter()
                seconds_per_step = (now - last_report) / max(step - report_step, 1)
                if step > recipe.probe_steps and now - started < recipe.replan_share * duration:
                    total = planned_steps(step, seconds_per_step, deadline - now, recipe.safety, cap)
                _report(curve, step, now - started, optimizer, seconds_per_step, cfg, teacher, sums, since, total)
                sums = {name: torch.zeros((), device=device) for name in LOSS_TERMS}
                since, last_report, report_step = 0, now, step
            if now - last_checkpoint >= recipe.checkpoint_minutes * 60:
                save_checkpoint(out / CHECKPOINT, payload())
                last_checkpoint = time.perf_counter()
    synchronise(device)
    elapsed = time.perf_counter() - started
    if since:
        recent = (elapsed - (last_report - started)) / max(step - report_step, 1)
        _report(curve, step, elapsed, optimizer, recent, cfg, teacher, sums, since, total)
    if total == UNPLANNED:  # ended before its speed was measured: the steps taken were the plan
        total = max(step, 1)
    save_checkpoint(out / CHECKPOINT, payload())
    summary = {
        "device": device_name(device), "torch": str(torch.__version__), "minutes": options.minutes,
        "steps": step, "planned_steps": total, "train_seconds": round(elapsed, 1),
        "setup_seconds": round(setup_seconds, 1), "sec_per_step": round(elapsed / max(step, 1), 4),
        "crops_per_step": cfg.schedule.batch_size + (cfg.schedule.unlabelled_batch_size if semi else 0),
        "stopped_by": "signal" if stop.raised else "steps" if step >= total else "time",
        "model": asdict(cfg.model), "preset": cfg.preset, "data": counts, "started_from": started_from,
        "checkpoint": CHECKPOINT, "curve": CURVE,
    }
    write_text(out / SUMMARY, json.dumps(summary, indent=2, default=str) + "\n")
    log.info(f"{step} steps in {elapsed:.0f} s ({summary['sec_per_step']:.3f} s/step) on {summary['device']}; "
             f"wrote {out / CHECKPOINT}")
    return summary


def start_networks(
    cfg: TrainConfig, device: torch.device, init_onnx: Path | None, resume: Path | None, pool: DevicePool,
    labelled: list[int], generator: torch.Generator,
) -> tuple[MT2Net, nn.Module | None, dict[str, Any] | None]:
    """(student on the device, teacher or None, where they started): random weights, an exported fp32 file, or
    a checkpoint's student and teacher."""
    net = MT2Net(cfg.model)
    started_from: dict[str, Any] | None = None
    if init_onnx is not None:
        started_from = _load_onnx(net, init_onnx, pool, labelled, cfg, generator)
    checkpoint = load_checkpoint(resume) if resume is not None else None
    if checkpoint is not None:
        net.load_state_dict(checkpoint["student"])
        started_from = {"file": Path(str(resume)).name, "step": checkpoint.get("step")}
    net = net.to(device)
    if cfg.runtime.channels_last:
        net = net.to(memory_format=torch.channels_last)
    teacher: nn.Module | None = None
    if checkpoint is not None and checkpoint.get("teacher") is not None:
        teacher = make_teacher(net)
        teacher.load_state_dict(checkpoint["teacher"])
    return net, teacher, started_from


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _teacher_start(cfg: TrainConfig, labelled: int) -> int:
    """The step the teacher starts at: after `teacher.warmup_epochs` epochs of the labelled set."""
    return cfg.teacher.warmup_epochs * steps_per_epoch(labelled, cfg.data.repeats, cfg.schedule.batch_size, 1)


def _load_onnx(net: MT2Net, path: Path, pool: DevicePool, labelled: list[int], cfg: TrainConfig,
               generator: torch.Generator) -> dict[str, Any]:
    """Exported weights into `net` (`training.onnx_weights`), BatchNorms calibrated on labelled crops as the
    CPU trainer's `start_weights` does; the record the checkpoint keeps."""
    count = min(len(labelled), CALIBRATION_CROPS)
    rng = np.random.default_rng([cfg.runtime.seed, 0])
    batch = labelled_batch(pool, np.asarray(labelled[:count]), rng, cfg.augment, generator)["image"]
    measured = load_onnx_weights(net, Path(path), batch.float().cpu())
    log.info("weights: %s loaded, BatchNorm calibrated on %d crops, parity %.1e", Path(path).name, count, measured)
    return {"file": Path(path).name, "sha256": sha256_file(path), "parity": measured}


def _report(curve: Curve, step: int, seconds: float, optimizer: torch.optim.Optimizer, seconds_per_step: float,
            cfg: TrainConfig, teacher: nn.Module | None, sums: dict[str, torch.Tensor], since: int,
            total: int) -> None:
    """One learning-curve row and one progress line (the only place the loss terms leave the device)."""
    means = {name: float(value) / max(since, 1) for name, value in sums.items()}
    crops = cfg.schedule.batch_size + (cfg.schedule.unlabelled_batch_size if teacher is not None else 0)
    lr = float(optimizer.param_groups[-1]["lr"])
    row = {"step": step, "seconds": round(seconds, 1), "lr": lr, "sec_per_step": round(seconds_per_step, 4),
           "crops_per_s": round(crops / max(seconds_per_step, 1e-9), 1), "teacher": int(teacher is not None),
           **{f"loss_{k}": round(v, 5) for k, v in means.items()}}
    curve.write(row)
    planned = f"/{total}" if total != UNPLANNED else ""
    log.info(f"step {step}{planned}  {seconds:.0f} s  lr {lr:.2e}  {seconds_per_step:.3f} s/step  "
             f"loss {means['total']:.4f} (cls {means['cls']:.3f} cell {means['cell']:.3f} "
             f"boundary {means['boundary']:.3f} consistency {means['consistency']:.4f})")


__all__ = [
    "CHECKPOINT",
    "CURVE",
    "SUMMARY",
    "GpuRecipe",
    "RunOptions",
    "autocast",
    "pick_device",
    "planned_steps",
    "resolve_start",
    "run_config",
    "start_networks",
    "train",
    "train_step",
]
