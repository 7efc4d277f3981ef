"""The learning curve of a long run: per-folder F1 of its checkpoint against steps and CPU hours.

    python -m benchmarks.curve --run runs/long --folders data/real/tune/* data/tune
    python -m benchmarks.curve --run runs/long --folders data/real/tune/* data/tune --reference weights

Each call scores the run's latest checkpoint (`--checkpoint`, default last.pt): its teacher is exported to
fp32 ONNX (no fp16 file, no parity checks: a model scored and thrown away), given the post-processing of the
`--reference` weights' manifest (so only the network differs from the shipped model), and run through the app
on every labelled folder, one view by default (`--app-args`). The row (step, CPU hours, F1 per folder and
over all images) is appended to RUN/curve.csv, and the whole curve is printed as a markdown table; with
`--reference` the shipped model's row is scored once and kept in the same file as step "reference".
CPU hours come from the run's log.csv (CPU seconds per step of each logged epoch, both threads counted, the
steps since the last logged epoch at the latest rate): they count the training process only.

Every row's per-image F1 is kept in RUN/curve_images.csv, so a new row is compared with an earlier one image by
image (`--against`, default the best earlier row): the mean paired difference per folder with its standard
error, which says whether a gain is beyond the tuning split's noise. `--model DIR --label NAME` scores an
exported model folder (another run's shipped weights, say) under the same settings as a row of its own.
"""

from __future__ import annotations

import argparse
import csv
import math
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from app.logs import setup_logging
from app.metric import evaluate_folders
from benchmarks.accuracy import check_labelled_folders, folder_name, predict_with_app

ROOT = Path(__file__).resolve().parents[1]
CURVE = "curve.csv"
IMAGES = "curve_images.csv"
REFERENCE = "reference"
ALL = "all"


def cpu_hours(log_csv: Path, step: int) -> float:
    """CPU hours of the training process up to `step`, from the epoch rows of a run's log.csv."""
    total, last_step, rate = 0.0, 0, 0.0
    if not log_csv.is_file():
        return 0.0
    for row in csv.DictReader(open(log_csv)):
        if not row.get("cpu_sec_per_step"):
            continue
        row_step = min(int(row["step"]), step)
        rate = float(row["cpu_sec_per_step"])
        total += max(row_step - last_step, 0) * rate
        last_step = max(last_step, row_step)
    total += max(step - last_step, 0) * rate
    return total / 3600.0


PerImage = list[tuple[str, str, float]]  # (folder name, image name, F1)


def score_model(model: Path, folders: list[Path], threads: int, app_args: str,
                work: Path) -> tuple[dict[str, float], PerImage]:
    """Mean F1 per folder (by `folder_name`) and over all images ("all") of one model through the app, and
    every image's F1."""
    per_image: PerImage = []
    taken: set[str] = set()
    for index, folder in enumerate(folders):
        pred = work / str(index)
        # fp32 for every row: the checkpoints are exported without an int8 file, the reference has one.
        predict_with_app(folder / "images", pred, model, threads, "none",
                         ("--precision", "fp32", *shlex.split(app_args)))
        pred.mkdir(parents=True, exist_ok=True)
        name = folder_name(folder, taken)
        per_image += [(name, image, s.f1) for image, s in evaluate_folders(folder / "labels", pred)]
    return mean_scores(per_image), per_image


def by_folder(values: list[tuple[str, float]]) -> dict[str, list[float]]:
    """(folder, value) pairs grouped per folder in first-seen order, then every value under "all"."""
    groups: dict[str, list[float]] = {}
    for folder, value in values:
        groups.setdefault(folder, []).append(value)
    groups[ALL] = [value for _, value in values]
    return groups


def mean_scores(per_image: PerImage) -> dict[str, float]:
    """Mean F1 per folder, in first-seen order, and over every image ("all")."""
    groups = by_folder([(folder, f1) for folder, _, f1 in per_image])
    return {name: sum(values) / max(len(values), 1) for name, values in groups.items()}


def paired_difference(new: PerImage, old: PerImage) -> dict[str, tuple[float, float, int]]:
    """Per folder and over all: (mean of new - old over the images both scored, its standard error, count)."""
    before = {(folder, image): f1 for folder, image, f1 in old}
    groups = by_folder([(folder, f1 - before[(folder, image)]) for folder, image, f1 in new
                        if (folder, image) in before])
    return {name: mean_and_error(diffs) for name, diffs in groups.items() if diffs}


def mean_and_error(values: list[float]) -> tuple[float, float, int]:
    """Mean, standard error of the mean (0 for one value) and count."""
    error = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return statistics.fmean(values), error, len(values)


def read_images(path: Path) -> dict[str, PerImage]:
    """Per-image F1 of every scored row, by row label."""
    rows: dict[str, PerImage] = {}
    if path.is_file():
        for row in csv.DictReader(open(path)):
            rows.setdefault(row["step"], []).append((row["folder"], row["image"], float(row["f1"])))
    return rows


def write_images(path: Path, rows: dict[str, PerImage]) -> None:
    from app.writer import rows_csv, write_text

    write_text(path, rows_csv([["step", "folder", "image", "f1"],
                               *([label, folder, image, f"{f1:.4f}"] for label, scored in rows.items()
                                 for folder, image, f1 in scored)]))


def comparison(label: str, against: str, diffs: dict[str, tuple[float, float, int]]) -> str:
    """One line: the paired difference per folder with its standard error."""
    parts = [f"{name} {mean:+.4f} ± {se:.4f} (n={n})" for name, (mean, se, n) in diffs.items()]
    return f"{label} against {against}, paired by image (mean difference ± standard error): " + "; ".join(parts)


def give_postprocess(model: Path, reference: Path) -> None:
    """The reference weights' post-processing written into `model`'s manifest (only the network differs)."""
    from app.manifest import class_settings, postprocess_settings, store_postprocess

    if (reference / "manifest.json").is_file():
        store_postprocess(model, postprocess_settings(reference), f"copied from {reference.name}",
                          class_settings(reference))


def export_checkpoint_model(checkpoint: Path, reference: Path, out: Path) -> int:
    """The checkpoint's teacher as fp32 ONNX in `out`, with the reference weights' post-processing; its step."""
    from training.checkpoint import load_checkpoint
    from training.export import export_fp32_only

    step = int(load_checkpoint(checkpoint)["step"])
    export_fp32_only(checkpoint, out)
    give_postprocess(out, reference)
    return step


def copy_model(model: Path, reference: Path, out: Path) -> None:
    """An exported model folder's fp32 file and manifest copied to `out`, with the reference's post-processing."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("manifest.json", "mt2.fp32.onnx"):
        if not (model / name).is_file():
            raise SystemExit(f"--model {model}: no {name}")
        shutil.copy2(model / name, out / name)
    give_postprocess(out, reference)


def read_curve(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(path))) if path.is_file() else []


def write_curve(path: Path, rows: list[dict[str, str]]) -> None:
    from app.writer import rows_csv, write_text

    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    write_text(path, rows_csv([fields, *([str(row.get(k, "")) for k in fields] for row in rows)]))


def row_order(row: dict[str, str]) -> tuple[int, int, str]:
    """The reference first, then checkpoints by step, then other labelled models by name."""
    label = row["step"]
    if label == REFERENCE:
        return (0, 0, label)
    return (1, int(label), "") if label.isdigit() else (2, 0, label)


def table(rows: list[dict[str, str]]) -> list[str]:
    """The curve as markdown: one row per scored checkpoint, the reference first."""
    if not rows:
        return []
    columns = [k for k in rows[0] if k not in ("step", "cpu_hours", "seconds")]
    lines = ["| step | CPU hours | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    for row in sorted(rows, key=row_order):
        lines.append(f"| {row['step']} | {row['cpu_hours']} | " + " | ".join(row.get(c, "") for c in columns) + " |")
    return lines


def best_other(rows: list[dict[str, str]], scored: dict[str, PerImage], label: str) -> str | None:
    """The label of the best-scoring ("all") other row whose per-image F1 is kept, if any."""
    others = [r for r in rows if r["step"] != label and r["step"] in scored and r.get(ALL)]
    return max(others, key=lambda r: float(r[ALL]))["step"] if others else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="run folder (last.pt, log.csv; the curve's files)")
    parser.add_argument("--checkpoint", default="last.pt", help="checkpoint file name in the run folder")
    parser.add_argument("--model", type=Path, help="score this exported model folder instead of a checkpoint")
    parser.add_argument("--label", help="the row name of --model (not a number)")
    parser.add_argument("--folders", type=Path, nargs="+", required=True, help="labelled folders to score")
    parser.add_argument("--reference", type=Path, default=ROOT / "weights",
                        help="weights whose post-processing the checkpoint gets (and scored once as 'reference')")
    parser.add_argument("--score-reference", action="store_true", help="also score the reference weights")
    parser.add_argument("--against", help="row to compare the new one with, image by image (default: best other)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--app-args", default="--flips 1", help="extra options of app predict (default: one view)")
    args = parser.parse_args(argv)
    if (args.model is None) != (args.label is None):
        parser.error("--model and --label go together")
    if args.label is not None and (args.label.isdigit() or args.label == REFERENCE):
        parser.error(f"--label {args.label}: a name that is not a step number or 'reference'")
    setup_logging()
    check_labelled_folders(parser, args.folders)
    curve = args.run / CURVE
    rows, scored = read_curve(curve), read_images(args.run / IMAGES)
    with tempfile.TemporaryDirectory(prefix="mt2-curve-") as tmp:
        work = Path(tmp)
        if args.score_reference and not any(r["step"] == REFERENCE for r in rows):
            started = time.perf_counter()
            scores, scored[REFERENCE] = score_model(args.reference, args.folders, args.threads, args.app_args,
                                                    work / "ref")
            rows.append({"step": REFERENCE, "cpu_hours": "", **{k: f"{v:.4f}" for k, v in scores.items()},
                         "seconds": f"{time.perf_counter() - started:.0f}"})
        started = time.perf_counter()
        label: str
        if args.model is not None:
            model, label, hours = work / "model", str(args.label), ""
            copy_model(args.model, args.reference, model)
        else:
            model = args.run / "curve_model"
            step = export_checkpoint_model(args.run / args.checkpoint, args.reference, model)
            label, hours = str(step), f"{cpu_hours(args.run / 'log.csv', step):.2f}"
        scores, scored[label] = score_model(model, args.folders, args.threads, args.app_args, work / "run")
        rows = [r for r in rows if r["step"] != label]
        rows.append({"step": label, "cpu_hours": hours, **{k: f"{v:.4f}" for k, v in scores.items()},
                     "seconds": f"{time.perf_counter() - started:.0f}"})
    write_curve(curve, rows)
    write_images(args.run / IMAGES, scored)
    print("\n".join(table(rows)))
    against = args.against or best_other(rows, scored, label)
    if against is not None and against in scored:
        print(comparison(label, against, paired_difference(scored[label], scored[against])))
    elif args.against:
        print(f"--against {args.against}: no per-image scores kept for that row")
    print(f"App options: {args.app_args or '(none)'}; post-processing of {args.reference.name}. "
          f"Command: `python -m benchmarks.curve {' '.join(sys.argv[1:] if argv is None else argv)}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
