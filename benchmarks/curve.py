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
"""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
import tempfile
import time
from pathlib import Path

from app.logs import setup_logging
from app.metric import evaluate_folders
from benchmarks.accuracy import check_labelled_folders, folder_name, predict_with_app

ROOT = Path(__file__).resolve().parents[1]
CURVE = "curve.csv"
REFERENCE = "reference"


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


def score_model(model: Path, folders: list[Path], threads: int, app_args: str, work: Path) -> dict[str, float]:
    """Mean F1 per folder (by `folder_name`) and over all images ("all") of one model through the app."""
    scores: dict[str, float] = {}
    every: list[float] = []
    taken: set[str] = set()
    for index, folder in enumerate(folders):
        pred = work / str(index)
        # fp32 for every row: the checkpoints are exported without an int8 file, the reference has one.
        predict_with_app(folder / "images", pred, model, threads, "none",
                         ("--precision", "fp32", *shlex.split(app_args)))
        pred.mkdir(parents=True, exist_ok=True)
        f1s = [s.f1 for _, s in evaluate_folders(folder / "labels", pred)]
        scores[folder_name(folder, taken)] = sum(f1s) / max(len(f1s), 1)
        every += f1s
    scores["all"] = sum(every) / max(len(every), 1)
    return scores


def export_checkpoint_model(checkpoint: Path, reference: Path, out: Path) -> int:
    """The checkpoint's teacher as fp32 ONNX in `out`, with the reference weights' post-processing; its step."""
    from app.manifest import class_settings, postprocess_settings, store_postprocess
    from training.checkpoint import load_checkpoint
    from training.export import export_fp32_only

    step = int(load_checkpoint(checkpoint)["step"])
    export_fp32_only(checkpoint, out)
    if (reference / "manifest.json").is_file():
        store_postprocess(out, postprocess_settings(reference), f"copied from {reference.name}",
                          class_settings(reference))
    return step


def read_curve(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(path))) if path.is_file() else []


def write_curve(path: Path, rows: list[dict[str, str]]) -> None:
    from app.writer import write_text

    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    lines = [",".join(fields)] + [",".join(str(row.get(k, "")) for k in fields) for row in rows]
    write_text(path, "\n".join(lines) + "\n")


def table(rows: list[dict[str, str]]) -> list[str]:
    """The curve as markdown: one row per scored checkpoint, the reference first."""
    if not rows:
        return []
    columns = [k for k in rows[0] if k not in ("step", "cpu_hours", "seconds")]
    lines = ["| step | CPU hours | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    for row in sorted(rows, key=lambda r: -1 if r["step"] == REFERENCE else int(r["step"])):
        lines.append(f"| {row['step']} | {row['cpu_hours']} | " + " | ".join(row.get(c, "") for c in columns) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="run folder (last.pt, log.csv)")
    parser.add_argument("--checkpoint", default="last.pt", help="checkpoint file name in the run folder")
    parser.add_argument("--folders", type=Path, nargs="+", required=True, help="labelled folders to score")
    parser.add_argument("--reference", type=Path, default=ROOT / "weights",
                        help="weights whose post-processing the checkpoint gets (and scored once as 'reference')")
    parser.add_argument("--score-reference", action="store_true", help="also score the reference weights")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--app-args", default="--flips 1", help="extra options of app predict (default: one view)")
    args = parser.parse_args(argv)
    setup_logging()
    check_labelled_folders(parser, args.folders)
    curve = args.run / CURVE
    rows = read_curve(curve)
    with tempfile.TemporaryDirectory(prefix="mt2-curve-") as tmp:
        work = Path(tmp)
        if args.score_reference and not any(r["step"] == REFERENCE for r in rows):
            started = time.perf_counter()
            scores = score_model(args.reference, args.folders, args.threads, args.app_args, work / "ref")
            rows.append({"step": REFERENCE, "cpu_hours": "", **{k: f"{v:.4f}" for k, v in scores.items()},
                         "seconds": f"{time.perf_counter() - started:.0f}"})
        started = time.perf_counter()
        model = args.run / "curve_model"
        step = export_checkpoint_model(args.run / args.checkpoint, args.reference, model)
        scores = score_model(model, args.folders, args.threads, args.app_args, work / "run")
        rows = [r for r in rows if r["step"] != str(step)]
        rows.append({"step": str(step), "cpu_hours": f"{cpu_hours(args.run / 'log.csv', step):.2f}",
                     **{k: f"{v:.4f}" for k, v in scores.items()}, "seconds": f"{time.perf_counter() - started:.0f}"})
    write_curve(curve, rows)
    print("\n".join(table(rows)))
    print(f"App options: {args.app_args or '(none)'}; post-processing of {args.reference.name}. "
          f"Command: `python -m benchmarks.curve {' '.join(sys.argv[1:] if argv is None else argv)}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
