"""The planner's modes side by side: F1 and time per image on labelled folders, as a user runs them.

    python -m benchmarks.modes --folders data/real/val/* samples
    python -m benchmarks.modes --folders data/real/val/* --modes fast,challenge \\
        --candidate "fast-s2=--mode fast --stride 384" --markdown modes.md

Each mode (``--modes``, default all three) and each extra ``--candidate NAME=OPTIONS`` runs ``python -m app
predict`` once per folder, in a fresh process, as a lab would run a folder: the start-up is paid once per folder
and reported apart; the per-image seconds come from the app's own report (read to write, diameter looks
included). F1 is the challenge's, per image, averaged per folder. A folder is either the challenge layout
(``images/`` + ``labels/``) or images with a ``labels/`` folder beside them (``samples/``).

Rows per folder: images, mean megapixels, and for each run F1, seconds per image, seconds per megapixel and
images per minute; the last lines compare each run with the first (``--modes``' first, the reference) in F1
per folder and in images per minute over all folders. Run it on an idle machine: it measures time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from app.metric import evaluate_folders
from app.modes import MODES
from app.pipeline import read_report
from benchmarks.accuracy import folder_name, machine

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class FolderRun:
    """One run of the app on one folder: mean F1, per-image seconds and pixels, start-up, exit code."""

    f1: float
    images: int
    seconds: float
    megapixels: float
    startup: float
    code: int

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(1, self.images)

    @property
    def seconds_per_mp(self) -> float:
        return self.seconds / max(1e-9, self.megapixels)

    @property
    def images_per_minute(self) -> float:
        return 60.0 * self.images / max(1e-9, self.seconds)


def image_folders(folder: Path) -> tuple[Path, Path]:
    """(images, labels) of a labelled folder in either layout."""
    return (folder / "images" if (folder / "images").is_dir() else folder), folder / "labels"


def parse_candidate(text: str) -> tuple[str, list[str]]:
    """'NAME=OPTIONS' as (name, app options)."""
    name, sep, options = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"a candidate is NAME=OPTIONS, got {text!r}")
    return name.strip(), shlex.split(options)


def run_folder(folder: Path, options: list[str], model: Path, threads: int, work: Path) -> FolderRun:
    """`python -m app predict OPTIONS` on one folder; scored against its labels."""
    images, labels = image_folders(folder)
    out = work / "out"
    report = work / "report.csv"
    command = [sys.executable, "-m", "app", "predict", "--input", str(images), "--output", str(out), "--model",
               str(model), "--report", str(report), *(["--threads", str(threads)] if threads else []), *options]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode == 2:
        raise RuntimeError(f"app predict could not start: {done.stderr.strip()}")
    rows = [row for row in read_report(report) if row["status"] == "ok"]
    out.mkdir(parents=True, exist_ok=True)
    scores = [s.f1 for _, s in evaluate_folders(labels, out)]
    return FolderRun(
        f1=sum(scores) / max(1, len(scores)),
        images=len(rows),
        seconds=sum(float(row["seconds"]) for row in rows),
        megapixels=sum(int(row["height"]) * int(row["width"]) for row in rows) / 1e6,
        startup=float(rows[0]["startup_s"]) if rows else 0.0,
        code=done.returncode,
    )


def totals(runs: list[FolderRun]) -> FolderRun:
    """All folders as one run: F1 averaged over every image, times summed."""
    images = sum(r.images for r in runs)
    return FolderRun(
        f1=sum(r.f1 * r.images for r in runs) / max(1, images), images=images,
        seconds=sum(r.seconds for r in runs), megapixels=sum(r.megapixels for r in runs),
        startup=max((r.startup for r in runs), default=0.0), code=max((r.code for r in runs), default=0),
    )


def table(names: list[str], runs: dict[str, dict[str, FolderRun]]) -> list[str]:
    """Markdown: a row per folder and one for all, for each run F1 | s/image | s/MP | images/min."""
    heads = list(runs)
    lines = [
        "| folder | images | MP/image | " + " | ".join(f"{h}: F1 | s/image | s/MP | images/min" for h in heads) + " |",
        "|---|---:|---:|" + "---:|---:|---:|---:|" * len(heads),
    ]
    for name in [*names, "all"]:
        first = runs[heads[0]][name]
        cells = [f"{r.f1:.3f} | {r.seconds_per_image:.2f} | {r.seconds_per_mp:.2f} | {r.images_per_minute:.1f}"
                 for r in (runs[h][name] for h in heads)]
        label = "**all**" if name == "all" else name
        lines.append(f"| {label} | {first.images} | {first.megapixels / max(1, first.images):.2f} | "
                     + " | ".join(cells) + " |")
    return lines


def comparison(names: list[str], runs: dict[str, dict[str, FolderRun]]) -> list[str]:
    """Each run against the first: the F1 change per folder (worst first) and the images-per-minute ratio."""
    heads = list(runs)
    reference = runs[heads[0]]
    lines = []
    for head in heads[1:]:
        deltas = sorted((runs[head][n].f1 - reference[n].f1, n) for n in names)
        speed = runs[head]["all"].images_per_minute / max(1e-9, reference["all"].images_per_minute)
        lines.append(f"- {head} against {heads[0]}: {speed:.2f}x the images per minute; F1 change per folder "
                     + ", ".join(f"{n} {d:+.3f}" for d, n in deltas))
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folders", type=Path, nargs="+", required=True, metavar="DIR", help="labelled folders")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated modes; the first is the reference")
    p.add_argument("--candidate", type=parse_candidate, action="append", default=[], metavar="NAME=OPTIONS",
                   help="an extra run with these app options (repeatable), e.g. 'fast-s384=--mode fast --stride 384'")
    p.add_argument("--model", type=Path, default=ROOT / "weights", help="weights folder or ONNX file")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: its default)")
    p.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    p.add_argument("--json", type=Path, default=None, help="also write every measurement as JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"unknown mode(s) {', '.join(unknown)}: choose from {', '.join(MODES)}")
    folders = list(args.folders)
    unlabelled = [str(f) for f in folders if not image_folders(f)[1].is_dir()]
    if unlabelled:
        raise SystemExit(f"no labels/ folder in {', '.join(unlabelled)}")
    candidates = [(m, ["--mode", m]) for m in modes] + list(args.candidate)
    taken: set[str] = set()
    names = [folder_name(f, taken) for f in folders]
    runs: dict[str, dict[str, FolderRun]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="modes-") as tmp:
        for label, options in candidates:
            runs[label] = {}
            for index, (name, folder) in enumerate(zip(names, folders)):
                run = run_folder(folder, options, args.model, args.threads, Path(tmp) / label / str(index))
                runs[label][name] = run
                print(f"{label} {name}: F1 {run.f1:.3f}, {run.seconds_per_image:.2f} s per image "
                      f"(start-up {run.startup:.2f} s)", file=sys.stderr, flush=True)
            runs[label]["all"] = totals([runs[label][n] for n in names])
    lines = [
        *table(names, runs), "",
        *comparison(names, runs), "",
        "Seconds per image: the app's own per-image time (read to write, diameter looks included), start-up "
        "(paid once per folder) apart: " + ", ".join(f"{k} {v['all'].startup:.2f} s" for k, v in runs.items()) + ".",
        *(f"- {label}: `{' '.join(options)}`" for label, options in candidates),
        f"Date {dt.date.today().isoformat()}; machine: {machine()}; total {time.perf_counter() - started:.0f} s.",
        "Command: `python -m benchmarks.modes " + " ".join(sys.argv[1:]) + "`",
    ]
    print("\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps({label: {n: asdict(r) for n, r in per.items()} for label, per in runs.items()},
                                        indent=1))
    failed = [label for label, per in runs.items() if per["all"].code]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
