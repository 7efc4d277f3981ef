"""One input folder end to end: every image read, normalised, planned, segmented and written, each stage timed.

Folder problems (a missing input folder, an output folder that cannot be written) stop the run before the
model is loaded, as a `SetupError`. Problems with one image (`InputError` from the reader, a name clash, or
any failure while it is processed) are reported on one line and the run goes on with the next image; the
exit code is 1 when any image failed. One log line per image gives its size, plan, seconds, the challenge
tolerance and the penalised time; `--report` writes the same rows, with per-stage seconds, as CSV.

Times: `seconds` is the image's own wall time in this process. The challenge runs one container per image,
so start-up (interpreter, imports, model load) is paid for every image there; the penalised time is
therefore computed on `seconds + startup_s`, which is what a single-image container run would be charged
(container start itself excluded).
"""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from app.config import CHALLENGE, InferenceConfig
from app.errors import InputError
from app.normalize import is_fluorescence, normalize, to_rgb
from app.diameter import choose_scales, size_estimate
from app.plan import Planner, describe
from app.reader import list_inputs, read_image, skip_reason
from app.runner import ModelRunner, resolve_model
from app.segment import segment
from app.timing import penalised, process_age, tolerance
from app.writer import output_name, write_labels, write_text

EXIT_OK = 0
EXIT_IMAGE_FAILED = 1
# Stage columns the pipeline itself times, in data-path order; stages timed inside segment() follow them.
OWN_STAGES = ("read", "normalise", "estimate", "plan")
WRITE_STAGE = "write"
REPORT_COLUMNS = (
    "image", "output", "status", "message", "height", "width", "channels", "dtype", "fluorescence",
    "diameter", "size_source", "scales", "stride", "flips", "plan", "cells", "seconds", "startup_s", "tolerance_s", "penalised_s",
)


class SetupError(Exception):
    """The run cannot start (input folder missing, output folder not writable); one line for the user."""


def check_folders(input_dir: Path | str, output_dir: Path | str) -> tuple[Path, Path]:
    """The input folder must exist; the output folder is created if needed and must accept a file."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        what = "is not a folder" if input_dir.exists() else "does not exist"
        raise SetupError(f"input folder {input_dir} {what}")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = write_text(output_dir / ".mt2-write-test", "")
        probe.unlink()
    except OSError as exc:
        raise SetupError(f"output folder {output_dir} is not writable ({exc.strerror or exc})") from exc
    return input_dir, output_dir


def process_image(
    path: Path,
    output: Path,
    runner: Any,
    planner: Any,
    cfg: InferenceConfig,
    row: dict[str, Any],
    timings: dict[str, float],
) -> None:
    """Read → to_rgb → normalise → plan → segment → write one image, filling `row` and `timings` as it goes."""
    t0 = time.perf_counter()
    image = read_image(path, cfg.max_pixels)
    timings["read"] = time.perf_counter() - t0
    height, width = image.shape[:2]
    row.update(height=height, width=width, channels=image.shape[2], dtype=str(image.dtype))

    t0 = time.perf_counter()
    rgb = to_rgb(image)
    del image
    image_u8 = normalize(rgb, cfg)
    del rgb
    fluorescence = is_fluorescence(image_u8, cfg)
    timings["normalise"] = time.perf_counter() - t0
    row["fluorescence"] = fluorescence

    t0 = time.perf_counter()
    size = size_estimate(image_u8, runner, cfg, planner.estimate_allowed(height, width))
    timings["estimate"] = size.seconds
    scales = choose_scales(size, fluorescence, cfg) if size.diameter is not None else None
    plan = planner.plan(height, width, fluorescence, scales, spent=size.seconds)
    timings["plan"] = time.perf_counter() - t0 - size.seconds
    row.update(diameter=round(size.diameter, 1) if size.diameter is not None else "", size_source=size.source)
    row.update(scales="/".join(f"{s:g}" for s in plan.scales), stride=plan.stride, flips=plan.flips,
               plan=plan.reason, scales_desc=describe(plan.scales, plan.stride, plan.flips))

    labels = segment(image_u8, runner, plan, cfg, timings)
    del image_u8
    if labels.shape != (height, width):
        raise RuntimeError(f"segmentation returned shape {labels.shape}, expected {(height, width)}")
    row["cells"] = int(labels.max()) if labels.size else 0

    t0 = time.perf_counter()
    write_labels(output, labels)
    timings[WRITE_STAGE] = time.perf_counter() - t0


def stage_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Per-stage CSV columns: the pipeline's own stages, those segment() reported (first-seen order), write."""
    seen: list[str] = []
    for row in rows:
        for key in row.get("_stages", {}):
            if key not in seen and key not in OWN_STAGES and key != WRITE_STAGE:
                seen.append(key)
    return [f"{k}_s" for k in (*OWN_STAGES, *seen, WRITE_STAGE)]


def report_csv(rows: list[dict[str, Any]]) -> str:
    """The report as CSV text: one row per image, fixed columns then per-stage seconds."""
    stages = stage_columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*REPORT_COLUMNS, *stages])
    for row in rows:
        cells = [_fmt(row.get(c, "")) for c in REPORT_COLUMNS]
        times = row.get("_stages", {})
        cells += [_fmt(times[c[:-2]]) if c[:-2] in times else "" for c in stages]
        writer.writerow(cells)
    return buffer.getvalue()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def size_text(row: dict[str, Any]) -> str:
    """"diameter 23.1 px (estimated)  " when the scales came from a diameter, else nothing."""
    if row.get("diameter") in (None, ""):
        return ""
    return f"diameter {row['diameter']:g} px ({row['size_source']})  "


def log_line(row: dict[str, Any]) -> str:
    """The one line printed per image."""
    if row["status"] != "ok":
        return f"FAILED {row['message']}"
    return (
        f"{row['image']}  {row['height']}x{row['width']}  {size_text(row)}{row['scales_desc']}  {row['cells']} cells  "
        f"{row['seconds']:.2f} s (+{row['startup_s']:.2f} s start-up)  tolerance {row['tolerance_s']:.1f} s  "
        f"penalised {row['penalised_s']:.2f} s  -> {row['output']}"
    )


def run_folder(
    input_dir: Path | str,
    output_dir: Path | str,
    model: Path | str,
    cfg: InferenceConfig,
    report: Path | str | None = None,
    *,
    echo: Callable[[str], None] | None = None,
) -> int:
    """Segment every image of `input_dir` into `output_dir`; return the exit code (0 all written, 1 some failed).

    Raises `SetupError` for folder problems and `app.errors.ModelError` for a model that cannot be used,
    both before any image is processed.
    """
    say = echo or (lambda line: tqdm.write(line, file=sys.stdout))
    warn = echo or (lambda line: tqdm.write(line, file=sys.stderr))
    input_dir, output_dir = check_folders(input_dir, output_dir)
    report_path = Path(report) if report is not None else None
    if report_path is not None:
        try:
            report_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SetupError(f"report folder {report_path.parent} cannot be created ({exc.strerror or exc})") from exc
    try:
        images, skipped = list_inputs(input_dir)
    except OSError as exc:
        raise SetupError(f"input folder {input_dir} cannot be listed ({exc.strerror or exc})") from exc
    for entry in skipped:
        warn(f"skipped {entry.name}: {skip_reason(entry)}")
    if not images:
        warn(f"no images in {input_dir} (extensions read: {' '.join(CHALLENGE.image_extensions)})")

    runner = ModelRunner(resolve_model(model, cfg.device), cfg.device, cfg.threads)
    startup = process_age()
    try:
        planner = Planner(runner, cfg, startup)
    except ValueError as exc:
        raise SetupError(str(exc)) from exc
    warn(
        f"model {runner.path.name} on {runner.provider} ({runner.precision}); start-up {startup:.2f} s; "
        f"up to {cfg.flips} view(s), scales fused by {cfg.fusion}; "
        f"post-processing T_cell {cfg.cell_threshold:g} T_seed {cfg.seed_threshold:g} S_min {cfg.min_seed_area}; "
        f"{len(images)} image(s)"
    )

    rows: list[dict[str, Any]] = []
    claimed: dict[str, str] = {}
    failed = 0
    try:
        for path in tqdm(images, disable=None, file=sys.stderr, unit="image", leave=False):
            name = output_name(path)
            row: dict[str, Any] = {"image": path.name, "output": name, "status": "ok", "message": ""}
            timings: dict[str, float] = {}
            t0 = time.perf_counter()
            try:
                if name in claimed:
                    raise InputError(path, f"output name {name} is already taken by {claimed[name]}; not overwriting")
                claimed[name] = path.name
                process_image(path, output_dir / name, runner, planner, cfg, row, timings)
            except InputError as exc:
                row.update(status="error", message=str(exc), output="")
            except Exception as exc:  # one image's failure must not stop the others; it is reported, not hidden
                row.update(status="error", message=f"{path.name}: {type(exc).__name__}: {exc}", output="")
            seconds = time.perf_counter() - t0
            row["_stages"] = timings
            if row["status"] == "ok":
                h, w = row["height"], row["width"]
                row.update(
                    seconds=seconds,
                    startup_s=startup,
                    tolerance_s=tolerance(h, w),
                    penalised_s=penalised(seconds + startup, h, w),
                )
                say(log_line(row))
            else:
                failed += 1
                row["seconds"] = seconds
                if "height" in row:
                    row["tolerance_s"] = tolerance(row["height"], row["width"])
                warn(log_line(row))
            rows.append(row)
    finally:
        if report_path is not None:
            write_text(report_path, report_csv(rows))
    ok = len(rows) - failed
    warn(f"{ok} of {len(rows)} image(s) written to {output_dir}" + (f"; {failed} failed" if failed else ""))
    return EXIT_IMAGE_FAILED if failed else EXIT_OK


__all__ = ["SetupError", "check_folders", "process_image", "report_csv", "run_folder"]
