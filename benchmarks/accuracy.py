"""Accuracy on a held-out synthetic set: F1 per modality and overall, for the methods the project compares.

    python -m benchmarks.accuracy                                  # everything (training budget: --max-steps)
    python -m benchmarks.accuracy --methods model,baseline         # shipped weights and the classical baseline only
    python -m benchmarks.accuracy --markdown accuracy.md --work runs/accuracy

Methods (columns of the table):
- ``model``: the shipped weights (``--model``, default weights/) through the app, ``python -m app predict``;
- ``baseline``: the classical baseline of benchmarks/baseline.py (Otsu threshold + distance-transform watershed);
- ``mt`` and ``supervised``: Mean Teacher against supervised-only, both trained from scratch with the same
  preset and the same number of optimiser steps when only ``--labelled-fraction`` (10%) of the labelled
  training images keep their labels (the rest join the unlabelled pool); each best checkpoint is exported to
  ONNX, its views, fusion and thresholds are chosen by ``python -m app tune`` on a separate tuning set
  (``--tune-images``, seed ``--tune-seed``), as the shipped weights' were, and it runs through the app like the
  shipped model.

With ``--folders DIR [DIR ...]`` the benchmark scores labelled folders instead of a generated set: each DIR in
the challenge layout (``images/`` + ``labels/``; real microscopy, say the validation part written by
``python -m training split``), one row per folder and the overall mean over all their images, for the methods
``model`` and ``baseline``:

    python -m benchmarks.accuracy --methods model,baseline --folders data/real/val/*

The held-out set is generated with its own seed (``--seed``, never the training seed), so no method has seen
its images. Scores are the challenge's: F1 per image (IoU >= 0.5, Hungarian matching, border cells removed),
averaged over the images of each modality and over all images.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from app.config import CHALLENGE
from app.logs import setup_logging
from app.metric import evaluate_folders
from training.synth.params import MODALITY_NAMES

ROOT = Path(__file__).resolve().parents[1]

METHODS = ("model", "baseline", "mt", "supervised")
TITLES = {
    "model": "shipped model",
    "baseline": "classical baseline",
    "mt": "Mean Teacher @{fraction:.0%}",
    "supervised": "supervised-only @{fraction:.0%}",
}
HELDOUT_SEED = 1000
TRAIN_SEED = 7
TUNE_SEED = 3000  # the tuning set of the shipped weights' recipe (weights/RECIPE.md) uses the same seed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--images", type=int, default=40, help="held-out images (default 40)")
    p.add_argument("--seed", type=int, default=HELDOUT_SEED, help="seed of the held-out set")
    p.add_argument("--size", type=int, nargs=2, default=(256, 512), metavar=("MIN", "MAX"),
                   help="held-out image sides in px (default 256 512)")
    p.add_argument("--model", type=Path, default=ROOT / "weights", help="shipped weights folder or ONNX file")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads for the app (0: its default)")
    p.add_argument("--budget", default="none", help="the app's --budget (default none: MT2's full plan)")
    p.add_argument("--work", type=Path, default=None, help="folder for data, runs and predictions (default: temp)")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table as Markdown to this file")
    p.add_argument("--folders", type=Path, nargs="+", default=None, metavar="DIR",
                   help="score these labelled folders (images/ + labels/) instead of a generated set")
    p.add_argument("--app-args", default="", metavar="'OPTIONS'",
                   help="extra options for app predict, e.g. '--scale-mode fixed' or '--target-diameter 20'")
    g = p.add_argument_group("Mean Teacher vs supervised-only (methods mt, supervised)")
    g.add_argument("--preset", default="cpu", help="training preset (default cpu)")
    g.add_argument("--train-images", type=int, default=120, help="labelled training images generated (default 120)")
    g.add_argument("--train-unlabelled", type=int, default=0, help="extra unlabelled training images (default 0)")
    g.add_argument("--train-seed", type=int, default=TRAIN_SEED, help="seed of the training set")
    g.add_argument("--train-size", type=int, nargs=2, default=(256, 384), metavar=("MIN", "MAX"),
                   help="training image sides in px (default 256 384)")
    g.add_argument("--labelled-fraction", type=float, default=0.1, help="labels kept (default 0.1)")
    g.add_argument("--max-steps", type=int, default=500, help="optimiser steps of each run (the budget; default 500)")
    g.add_argument("--tune-images", type=int, default=20,
                   help="labelled images on which each trained model's settings are tuned (0: MT2's; default 20)")
    g.add_argument("--tune-seed", type=int, default=TUNE_SEED, help="seed of the tuning set")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="extra training overrides for both runs")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {','.join(METHODS)}")
    if args.seed == args.train_seed:
        p.error("--seed (held-out set) must differ from --train-seed")
    if args.seed == args.tune_seed:
        p.error("--seed (held-out set) must differ from --tune-seed")
    if args.folders:
        if {"mt", "supervised"} & set(args.methods):
            p.error("--folders scores the methods model and baseline only")
        check_labelled_folders(p, args.folders)
    if "model" in args.methods and not args.model.exists():
        p.error(f"--model {args.model} not found (train and export the shipped weights, or leave out 'model')")
    return args


def check_labelled_folders(parser: argparse.ArgumentParser, folders: list[Path]) -> None:
    """Stop with a usage error at the first of `folders` that lacks images/ or labels/ (challenge layout)."""
    for folder in folders:
        if not (folder / "images").is_dir() or not (folder / "labels").is_dir():
            parser.error(f"--folders {folder}: needs images/ and labels/")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_heldout(folder: Path, images: int, seed: int, size: tuple[int, int]) -> dict[str, str]:
    """Generate the held-out set; return image name -> modality."""
    from training.synth import SynthConfig, generate_dataset

    rows = generate_dataset(folder, images, 0, seed, SynthConfig(min_size=size[0], max_size=size[1]))
    return {r["name"]: r["modality"] for r in rows}


def predict_with_app(images: Path, out: Path, model: Path, threads: int, budget: str,
                     extra: tuple[str, ...] = ()) -> None:
    """Run the app's own command line on a folder, as a user would.

    The accurate mode with the budget "none" by default (the full plan: every view and scale) so that accuracy
    does not depend on how busy the machine is while the planner measures it.
    """
    command = [sys.executable, "-m", "app", "predict", "--input", str(images), "--output", str(out),
               "--model", str(model), "--mode", "accurate", "--budget", budget]
    if threads:
        command += ["--threads", str(threads)]
    command += list(extra)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode == 2:
        raise RuntimeError(f"app predict could not start: {done.stderr.strip() or done.stdout.strip()}")
    if done.returncode != 0:
        log(f"app predict: some images failed (exit {done.returncode}); they count as misses")


def predict_baseline(images: Path, out: Path) -> None:
    from benchmarks.baseline import segment_folder

    segment_folder(images, out)


def train_and_export(args: argparse.Namespace, data: Path, run: Path, semi: bool) -> Path:
    """Train one run of the comparison and export its best checkpoint; return the weights folder (fp32 + manifest)."""
    from training.config import load_config, parse_override
    from training.export import export_fp32_only
    from training.trainer import train

    overrides = dict(parse_override(text) for text in args.overrides)
    overrides.update({
        "data.labelled_fraction": args.labelled_fraction,
        "teacher.semi_supervised": semi,
        "schedule.epochs": 100_000,  # the step cap is the budget
        "schedule.max_steps": args.max_steps,
        "runtime.progress": False,
        "runtime.tensorboard": False,
    })
    cfg = load_config(args.preset, overrides)
    best = train(cfg, data, run)
    # Only the fp32 model is needed (the app runs it on the CPU); the fp16 parity check belongs to shipping.
    folder = run / "onnx"
    export_fp32_only(best, folder, which="teacher" if semi else "student")
    return folder


def tune_thresholds(model: Path, tuning: Path, threads: int) -> None:
    """Store the best views, fusion and thresholds for `model` (a weights folder) with the app's own command."""
    command = [sys.executable, "-m", "app", "tune", "--data", str(tuning), "--model", str(model), "--write",
               "--device", "cpu"]
    if threads:
        command += ["--threads", str(threads)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"app tune failed for {model}: {done.stderr.strip().splitlines()[-1:]}")
    log(done.stdout.strip().splitlines()[-2])


def score(gt: Path, pred: Path, modality_of: dict[str, str]) -> dict[str, float]:
    """Mean F1 per modality and overall ("all") over the images of the held-out set."""
    per: dict[str, list[float]] = defaultdict(list)
    for name, scores in evaluate_folders(gt, pred):
        per[modality_of[name.removesuffix(CHALLENGE.output_suffix)]].append(scores.f1)
        per["all"].append(scores.f1)
    return {key: sum(v) / len(v) for key, v in per.items()}


def table(
    results: dict[str, dict[str, float]], counts: dict[str, int], fraction: float,
    rows: list[str] | None = None, first: str = "modality",
) -> list[str]:
    """Markdown table: one row per modality (or per entry of `rows`) plus overall, one column per method
    (`fraction`: labels kept)."""
    methods = list(results)
    head = f"| {first} | images | " + " | ".join(TITLES[m].format(fraction=fraction) for m in methods) + " |"
    rule = "|---|---:|" + "---:|" * len(methods)
    lines = [head, rule]
    for key in [*(rows if rows is not None else MODALITY_NAMES), "all"]:
        if not counts.get(key):
            continue
        cells = []
        for m in methods:
            value = results[m].get(key)
            cells.append("n/a" if value is None else f"{value:.3f}")
        name = "**overall**" if key == "all" else key
        lines.append(f"| {name} | {counts[key]} | " + " | ".join(cells) + " |")
    return lines


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU threads ({cpu}), "
            f"Python {platform.python_version()}")


def folder_name(folder: Path, taken: set[str]) -> str:
    """A row name for a scored folder: its own name, with its parent's in front when that name is taken."""
    name = folder.resolve().name
    if name in taken:
        name = f"{folder.resolve().parent.name}/{name}"
    taken.add(name)
    return name


def run_folders(args: argparse.Namespace, work: Path) -> list[str]:
    """Score the model and/or the baseline on each labelled folder; one row per folder plus overall."""
    per_method: dict[str, dict[str, list[float]]] = {m: defaultdict(list) for m in args.methods}
    names: list[str] = []
    counts: dict[str, int] = defaultdict(int)
    taken: set[str] = set()
    started = time.perf_counter()
    for index, folder in enumerate(args.folders):
        name = folder_name(folder, taken)
        names.append(name)
        for method in args.methods:
            pred = work / f"pred_{method}" / str(index)
            t0 = time.perf_counter()
            if method == "model":
                predict_with_app(folder / "images", pred, args.model, args.threads, args.budget,
                                 tuple(shlex.split(args.app_args)))
            else:
                predict_baseline(folder / "images", pred)
            pred.mkdir(parents=True, exist_ok=True)
            scores = [s.f1 for _, s in evaluate_folders(folder / "labels", pred)]
            per_method[method][name] = scores
            per_method[method]["all"].extend(scores)
            counts[name] = len(scores)
            log(f"{name} {method}: F1 {sum(scores) / max(1, len(scores)):.3f} over {len(scores)} images "
                f"({time.perf_counter() - t0:.0f} s)")
    counts["all"] = sum(counts[n] for n in names)
    results = {m: {k: sum(v) / len(v) for k, v in rows.items() if v} for m, rows in per_method.items()}
    lines = table(results, counts, 0.0, rows=names, first="folder")
    means = ", ".join(
        f"{TITLES[m]} {sum(results[m][n] for n in names if n in results[m]) / len(names):.3f}" for m in results)
    lines += [
        "",
        f"Overall is the mean over all {counts['all']} images; the mean of the folder rows: {means}.",
        f"Date {dt.date.today().isoformat()}; machine: {machine()}; total {time.perf_counter() - started:.0f} s.",
    ]
    if "model" in results:
        lines.append(model_settings(args.model))
    lines.append("Command: `python -m benchmarks.accuracy " + " ".join(sys.argv[1:]) + "`")
    return lines


def model_settings(model: Path) -> str:
    """One line naming the settings the app ran the model with."""
    from app.manifest import postprocess_settings

    tuned = postprocess_settings(model)
    return "Shipped model settings: " + (
        ", ".join(f"{k} {v}" for k, v in tuned.items()) + " (from its manifest)" if tuned else "MT2's defaults.")


def run(args: argparse.Namespace) -> list[str]:
    import tempfile

    work_ctx = tempfile.TemporaryDirectory(prefix="accuracy-") if args.work is None else None
    work = Path(work_ctx.name) if work_ctx else args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.folders:
        try:
            return run_folders(args, work)
        finally:
            if work_ctx:
                work_ctx.cleanup()
    started = time.perf_counter()
    try:
        heldout = work / "heldout"
        log(f"held-out set: {args.images} images, seed {args.seed}")
        modality_of = make_heldout(heldout, args.images, args.seed, tuple(args.size))
        counts: dict[str, int] = dict(Counter(modality_of.values()))
        counts["all"] = len(modality_of)
        results: dict[str, dict[str, float]] = {}
        seconds: dict[str, float] = {}
        images, gt = heldout / "images", heldout / "labels"
        for method in args.methods:
            t0 = time.perf_counter()
            pred = work / f"pred_{method}"
            if method == "model":
                log(f"shipped model {args.model}: app predict")
                predict_with_app(images, pred, args.model, args.threads, args.budget, tuple(shlex.split(args.app_args)))
            elif method == "baseline":
                log("classical baseline")
                predict_baseline(images, pred)
            else:
                data = work / "train"
                if not (data / "meta.csv").exists():
                    log(f"training set: {args.train_images} labelled + {args.train_unlabelled} unlabelled, "
                        f"seed {args.train_seed}")
                    from training.synth import SynthConfig, generate_dataset

                    generate_dataset(data, args.train_images, args.train_unlabelled, args.train_seed,
                                     SynthConfig(min_size=args.train_size[0], max_size=args.train_size[1]))
                log(f"training {method} ({args.max_steps} steps, {args.labelled_fraction:.0%} labels)")
                weights = train_and_export(args, data, work / f"run_{method}", semi=method == "mt")
                if args.tune_images:
                    tuning = work / "tuning"
                    if not (tuning / "meta.csv").exists():
                        log(f"tuning set: {args.tune_images} images, seed {args.tune_seed}")
                        make_heldout(tuning, args.tune_images, args.tune_seed, tuple(args.size))
                    tune_thresholds(weights, tuning, args.threads)
                predict_with_app(images, pred, weights, args.threads, args.budget)
            pred.mkdir(parents=True, exist_ok=True)
            results[method] = score(gt, pred, modality_of)
            seconds[method] = time.perf_counter() - t0
            log(f"{method}: overall F1 {results[method]['all']:.3f} ({seconds[method]:.0f} s)")
    finally:
        if work_ctx:
            work_ctx.cleanup()
    lines = table(results, counts, args.labelled_fraction)
    if "mt" in results and "supervised" in results:
        diff = results["mt"]["all"] - results["supervised"]["all"]
        lines += ["", f"Mean Teacher minus supervised-only, overall F1: {diff:+.3f}"]
    lines += [
        "",
        f"Held-out set: {args.images} synthetic images, seed {args.seed}, sides {args.size[0]}-{args.size[1]} px. "
        f"Date {dt.date.today().isoformat()}; machine: {machine()}; total {time.perf_counter() - started:.0f} s.",
    ]
    if "model" in results:
        lines.append(model_settings(args.model))
    if {"mt", "supervised"} & set(results):
        lines.append(
            f"Training comparison: preset `{args.preset}`, {args.train_images} labelled images (seed "
            f"{args.train_seed}), {args.labelled_fraction:.0%} keep labels, {args.max_steps} steps per run; "
            + (f"views, fusion and thresholds tuned on {args.tune_images} images (seed {args.tune_seed})."
               if args.tune_images else "MT2's settings.")
        )
    lines.append("Command: `python -m benchmarks.accuracy " + " ".join(sys.argv[1:]) + "`")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(info_to_stdout=False)  # stdout is the table; the trainer's lines go with the progress
    try:
        lines = run(args)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    emit(lines, args.markdown)
    return 0


def emit(lines: list[str], markdown: Path | None) -> None:
    """Print the report and, when asked, write it as Markdown too."""
    text = "\n".join(lines)
    print(text)
    if markdown:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
