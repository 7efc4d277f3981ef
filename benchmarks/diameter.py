"""How close the adaptive mode's diameter estimate comes to the labelled object size, at native size and resized.

    python -m benchmarks.diameter --folders data/real/train/* --images 8
    python -m benchmarks.diameter --folders data/real/train/* --set estimate_scales=0.25,0.5,1,2

For each labelled image (resized by each ``--resizes`` factor: images with antialiasing, labels by nearest
neighbour) the app's estimate (`app.diameter.size_estimate`, manifest settings plus ``--set`` overrides) is compared
with the labelled size (`app.diameter.label_diameter`: the median equivalent diameter of the labelled objects that do
not touch the border, of all of them when every one does). The table gives, per
folder and factor, the median of estimate / labelled, the share of images within 25% of the labelled size, the share
whose estimate follows the resize (within 25% of the factor times the image's own estimate at native size: what
keeps adaptive scales steady when cells change size), the images that fell back to fixed scales and the looks and
seconds spent. Only the estimate runs (one window per look), so a study of the estimator takes minutes where the
full accuracy benchmark takes an hour; whether a better estimate gives a better F1 is still for
``benchmarks.inputs`` to show.
"""

from __future__ import annotations

import argparse
import ast
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.config import InferenceConfig
from app.diameter import ESTIMATED, label_diameter, size_estimate
from app.manifest import postprocess_settings
from app.metric import read_labels
from app.normalize import normalize, to_rgb
from app.reader import read_image
from app.runner import ModelRunner, resolve_model
from benchmarks.accuracy import check_labelled_folders, emit, folder_name, machine
from benchmarks.inputs import pairs, resized_copy

ROOT = Path(__file__).resolve().parents[1]
WITHIN = 0.25  # an estimate within this relative error of the labelled size counts as right


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folders", type=Path, nargs="+", required=True, metavar="DIR",
                   help="labelled folders (images/ + labels/)")
    p.add_argument("--images", type=int, default=8, help="images per folder (the first by name; 0: all)")
    p.add_argument("--resizes", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="resize factors")
    p.add_argument("--model", type=Path, default=ROOT / "weights", help="weights folder or ONNX file")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: its default)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="an InferenceConfig field for this run (tuples as comma lists), repeatable")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    args = p.parse_args(argv)
    check_labelled_folders(p, args.folders)
    return args


def parse_override(text: str) -> tuple[str, object]:
    """`field=value` of one --set: numbers as numbers, comma lists as tuples."""
    name, sep, raw = text.partition("=")
    if not sep or name not in InferenceConfig.field_names():
        raise SystemExit(f"--set {text}: expected FIELD=VALUE with an InferenceConfig field")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if isinstance(value, list):
        value = tuple(value)
    return name, value


@dataclass(frozen=True)
class Record:
    """One image at one resize factor: the labelled size and what the estimate made of it."""

    folder: str
    image: str
    factor: float
    labelled: float
    estimate: float | None  # None: too few objects, fixed scales
    looks: int
    seconds: float


def row_cells(records: list[Record], native: dict[tuple[str, str], float | None]) -> str:
    """Table cells of one group of records: median estimate / labelled, the share within WITHIN of the labelled
    size, the share within WITHIN of the native estimate times the factor (an estimate that follows the resize),
    fallbacks, mean looks and seconds."""
    ratios = [r.estimate / r.labelled for r in records if r.estimate is not None]
    within = sum(abs(x - 1.0) <= WITHIN for x in ratios) / len(records)
    follows = [r.estimate / (r.factor * base) for r in records
               if r.estimate is not None and (base := native.get((r.folder, r.image))) is not None]
    follow = f"{sum(abs(x - 1.0) <= WITHIN for x in follows) / len(records):.0%}" if native and follows else "n/a"
    median = f"{np.median(ratios):.2f}" if ratios else "n/a"
    return (f"{median} | {within:.0%} | {follow} | {len(records) - len(ratios)} | "
            f"{np.mean([r.looks for r in records]):.1f} | {np.mean([r.seconds for r in records]):.2f}")


def table(records: list[Record], factors: list[float]) -> list[str]:
    """One row per folder and factor, then per factor over all folders."""
    native = {(r.folder, r.image): r.estimate for r in records if r.factor == 1.0}
    lines = ["| folder | resize | labelled px (median) | estimate / labelled | within 25% | follows the resize "
             "| fell back | looks | s |", "|---|---|---|---|---|---|---|---|---|"]
    folders = list(dict.fromkeys(r.folder for r in records))
    groups = [(folder, factor, [r for r in records if r.folder == folder and r.factor == factor])
              for folder in folders for factor in factors]
    if len(folders) > 1:
        groups += [("all", factor, [r for r in records if r.factor == factor]) for factor in factors]
    for name, factor, group in groups:
        if group:
            sizes = f"{np.median([r.labelled for r in group]):.1f}" if name != "all" else ""
            lines.append(f"| {name} ({len(group)}) | x{factor:g} | {sizes} | "
                         f"{row_cells(group, native if factor != 1.0 else {})} |")
    return lines


def measure(folder: Path, name: str, args: argparse.Namespace, runner: ModelRunner,
            cfg: InferenceConfig) -> list[Record]:
    """The estimate of every image of one folder at every resize factor."""
    records = []
    for image_path, label_path in pairs(folder, args.images):
        image, labels = read_image(image_path, cfg.max_pixels), read_labels(label_path)
        for factor in args.resizes:
            img, lab = (image, labels) if factor == 1.0 else resized_copy(image, labels, factor)
            labelled = label_diameter(lab)
            if labelled is None:
                continue
            found = size_estimate(normalize(to_rgb(img), cfg), runner, cfg)
            estimate = found.diameter if found.source == ESTIMATED else None
            records.append(Record(name, image_path.name, factor, labelled, estimate, found.looks, found.seconds))
            shown = "none" if estimate is None else f"{estimate:.1f} px"
            print(f"{name} {image_path.name} x{factor:g}: labelled {labelled:.1f} px, estimate {shown} "
                  f"({found.looks} looks)", file=sys.stderr)
    return records


def run(args: argparse.Namespace) -> list[str]:
    overrides = dict(parse_override(s) for s in args.set)
    cfg = InferenceConfig(threads=args.threads).with_overrides(**{**postprocess_settings(args.model), **overrides})
    runner = ModelRunner(resolve_model(args.model, "cpu"), "cpu", args.threads)
    taken: set[str] = set()
    records = [r for folder in args.folders for r in measure(folder, folder_name(folder, taken), args, runner, cfg)]
    return [
        f"Diameter estimate against the labels ({time.strftime('%Y-%m-%d')}, {machine()}; model "
        f"{runner.path.name}, target {cfg.target_diameter:g} px, looks "
        f"{'/'.join(f'{s:g}' for s in cfg.estimate_scales)}" + (f"; set {' '.join(args.set)}" if args.set else "")
        + ")",
        "",
        *table(records, args.resizes),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    lines = run(args)
    lines.append("")
    lines.append(f"({math.ceil(time.perf_counter() - started)} s)")
    emit(lines, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
