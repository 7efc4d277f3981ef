"""Training speed on this CPU: the previous setting and the adopted one side by side, whole steps.

    python -m benchmarks.training                      # the long preset's data (see weights/RECIPE.md) and weights
    python -m benchmarks.training --steps 40 --curve 200
    python -m benchmarks.training --synthetic 24       # no data folders: a small generated set

A whole step as the trainer takes it: fetching the labelled and unlabelled batches (augmentation included,
in the training process or in `data.num_workers` loader processes), the teacher's pass on the weak views,
the student's forward and backward on both, AdamW and the EMA update (`training.trainer.train_step`).
The settings run one after the other in this process, on the same data, from the same weights and with the
same batches (every draw is fixed by seed and position), with `--threads` torch threads; nothing else
should run on the machine meanwhile. `--curve N` trains each setting N steps from the same start and
reports the mean loss of the last quarter: a faster setting pays only if it learns as much per step.
The last line is `speedup X.XX`: steps per hour of the adopted setting over the previous one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
PRESET = "long"
PREVIOUS = {"runtime.cpu_bf16": False, "runtime.channels_last": False, "data.num_workers": 0}
DEFAULT_FOLDERS = ("data/real/train/dsb2018_fluorescence", "data/real/train/dsb2018_stained",
                   "data/real/train/usiigaci_phase", "data/ship_train")


def settings(adopted: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rows of the table: the previous setting, each change alone, the adopted setting (the preset's)."""
    return {
        "previous: fp32, NCHW, data in the loop": dict(PREVIOUS),
        "channels last": {**PREVIOUS, "runtime.channels_last": True},
        "bf16 autocast": {**PREVIOUS, "runtime.cpu_bf16": True},
        "bf16 + channels last": {**PREVIOUS, "runtime.cpu_bf16": True, "runtime.channels_last": True},
        "bf16 + channels last + 1 data worker": {**PREVIOUS, "runtime.cpu_bf16": True,
                                                 "runtime.channels_last": True, "data.num_workers": 1},
        "adopted (preset)": adopted,
    }


def adopted_setting(cfg: Any) -> dict[str, Any]:
    return {"runtime.cpu_bf16": cfg.runtime.cpu_bf16, "runtime.channels_last": cfg.runtime.channels_last,
            "data.num_workers": cfg.data.num_workers}


class Bench:
    """Data prepared once; each setting gets a fresh network from the same starting weights."""

    def __init__(self, folders: list[Path], init_onnx: Path | None, threads: int, overrides: dict[str, Any]) -> None:
        from training.config import load_config, with_overrides
        from training.data import LabelledCrops, UnlabelledCrops, sampling_probabilities
        from training.trainer import Dist, prepare_data

        torch.set_num_threads(threads)
        preset = load_config(PRESET)
        weights = list(preset.data.weights) if len(preset.data.weights) == len(folders) else []
        self.base = with_overrides(preset, {"runtime.threads": threads, "runtime.progress": False,
                                            "data.sources": [str(f) for f in folders], "data.weights": weights,
                                            **overrides})
        cache = Path(self.base.data.cache_dir) if self.base.data.cache_dir else Path(tempfile.mkdtemp()) / "cache"
        self.data = prepare_data(self.base, folders, cache, Dist())
        self.labelled = LabelledCrops(self.data.labelled, self.base.augment, self.base.runtime.seed)
        self.unlabelled = UnlabelledCrops(self.data.unlabelled, self.base.augment, self.base.runtime.seed)
        self.probs = sampling_probabilities([p.source for p in self.data.labelled], self.base.data.weights)
        self.u_probs = sampling_probabilities([p.source for p in self.data.unlabelled], self.base.data.weights)
        self.start = self._start_state(init_onnx)

    def _start_state(self, init_onnx: Path | None) -> dict[str, torch.Tensor]:
        from training.model import MT2Net
        from training.trainer import start_weights

        torch.manual_seed(0)
        net = MT2Net(self.base.model)
        if init_onnx is not None:
            start_weights(net, self.labelled, torch.device("cpu"), None, init_onnx)
        return {k: v.clone() for k, v in net.state_dict().items()}

    def config(self, change: dict[str, Any]) -> Any:
        """The benchmark's configuration with `change` (dotted preset keys) applied."""
        from training.config import with_overrides

        return with_overrides(self.base, change)

    def run(self, change: dict[str, Any], steps: int, untimed: int) -> tuple[list[float], list[float]]:
        """Seconds of each timed whole step and the total loss of every step, `untimed` steps first."""
        from training.mean_teacher import make_teacher
        from training.model import MT2Net
        from training.schedule import make_scheduler
        from training.trainer import Dist, build_optimizer, make_loader, train_step

        cfg = self.config(change)
        torch.manual_seed(0)
        net = MT2Net(cfg.model)
        if cfg.model == self.base.model:  # another architecture starts from its own seeded initialisation
            net.load_state_dict(self.start)
        if cfg.runtime.channels_last:
            net = net.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(net, cfg)
        total = untimed + steps
        scheduler = make_scheduler(optimizer, cfg, max(total, cfg.schedule.max_steps))
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        teacher = make_teacher(net)
        place, device = Dist(), torch.device("cpu")
        labelled = iter(make_loader(self.labelled, cfg, total, 0, 0, cfg.schedule.batch_size, place, self.probs))
        unlabelled = iter(make_loader(self.unlabelled, cfg, total, 0, 1, cfg.schedule.unlabelled_batch_size, place,
                                      self.u_probs))
        seconds, losses = [], []
        for step in range(total):
            started = time.perf_counter()
            terms = train_step(net, teacher, next(labelled), next(unlabelled), optimizer, scheduler, scaler, cfg,
                               step, device)
            if step >= untimed:
                seconds.append(time.perf_counter() - started)
            losses.append(terms["total"])
        return seconds, losses


def synthetic_folder(count: int) -> Path:
    from training.synth.generate import SynthConfig, generate_dataset

    out = Path(tempfile.mkdtemp(prefix="mt2-train-bench-"))
    generate_dataset(out, count, max(count // 2, 1), seed=7, cfg=SynthConfig(min_size=256, max_size=384))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", action="append", type=Path, help="labelled folder (repeat); default: the "
                        "long preset's four folders of weights/RECIPE.md")
    parser.add_argument("--synthetic", type=int, default=0, help="use N generated labelled images instead")
    parser.add_argument("--init-onnx", type=Path, default=ROOT / "weights" / "mt2.fp32.onnx",
                        help="starting weights (default: the shipped fp32 model; 'none': random)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per setting")
    parser.add_argument("--untimed", type=int, default=3, help="steps before timing (allocations, loader start)")
    parser.add_argument("--curve", type=int, default=0, help="also train N steps per setting and compare losses")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("pair", "all"), default="all",
                        help="pair: only the previous and the adopted setting")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a field of the preset for every setting (e.g. augment.crop=64)")
    args = parser.parse_args(argv)
    from training.config import parse_override

    if args.synthetic:
        folders = [synthetic_folder(args.synthetic)]
    else:
        folders = args.data or [ROOT / f for f in DEFAULT_FOLDERS]
        missing = [str(f) for f in folders if not f.is_dir()]
        if missing:
            sys.exit(f"data folder not found: {', '.join(missing)} (make them as in weights/RECIPE.md, or use "
                     "--synthetic N)")
    init = None if str(args.init_onnx) == "none" or not args.init_onnx.is_file() else args.init_onnx
    overrides = dict(parse_override(text) for text in args.overrides)
    if args.synthetic:
        overrides.setdefault("data.cache_dir", "")
    bench = Bench(folders, init, args.threads, overrides)
    rows = settings(adopted_setting(bench.base))
    if args.only == "pair":
        rows = {k: v for k, v in rows.items() if k.startswith(("previous", "adopted"))}
    cfg = bench.base
    print(f"# whole training steps: {cfg.schedule.batch_size} labelled + {cfg.schedule.unlabelled_batch_size} "
          f"unlabelled crops of {cfg.augment.crop}², {cfg.model.encoder} UNet++, {args.threads} thread(s), "
          f"{len(bench.data.labelled)} labelled images, start: {init.name if init else 'random'}")
    header = "| setting | s/step (median) | steps/hour | vs previous |" + (
        f" mean loss, steps {args.curve * 3 // 4}-{args.curve} |" if args.curve else "")
    print(header)
    print("|" + "---|" * header.count(" |"))
    per_hour: dict[str, float] = {}
    for name, change in rows.items():
        seconds, _ = bench.run(change, args.steps, args.untimed)
        median = statistics.median(seconds)
        per_hour[name] = 3600.0 / median
        ratio = per_hour[name] / per_hour[next(iter(per_hour))]
        line = f"| {name} | {median:.3f} | {per_hour[name]:.0f} | {ratio:.2f}x |"
        if args.curve:
            _, losses = bench.run(change, 0, args.curve)
            line += f" {np.mean(losses[args.curve * 3 // 4:]):.4f} |"
        print(line, flush=True)
    speedup = per_hour["adopted (preset)"] / per_hour[next(iter(per_hour))]
    print(f"speedup {speedup:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
