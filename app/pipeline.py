"""One input folder end to end: every image read, normalised, planned, segmented and written, each stage timed.

Folder problems (a missing input folder, an output folder that cannot be written) stop the run before the
model is loaded, as a `SetupError`. Problems with one image (`InputError` from the reader, a name clash, or
any failure while it is processed) are reported on one line and the run goes on with the next image; the
exit code is 1 when any image failed. One log line per image gives its size, plan, seconds, the challenge
tolerance and the penalised time; `--report` writes the same rows, with per-stage seconds, as CSV.

Extras (`--overlay`, `--rois`, `--geojson`, `--measure`; app/extras.py) are written after the label file, each
atomically; one that fails is reported on its own `FAILED <file>: <reason>` line, the label file stays, the
other extras are still written and the exit code is 1.

Times: `seconds` is the image's own wall time in this process. The challenge runs one container per image,
so start-up (interpreter, imports, model load) is paid for every image there; the penalised time is
therefore computed on `seconds + startup_s`, which is what a single-image container run would be charged
(container start itself excluded).
"""

from __future__ import annotations

import csv
import io
import logging
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Collection, Mapping

import numpy as np
from tqdm import tqdm

from app import extras as extra_outputs
from app.config import CHALLENGE, EXTRA_SUFFIXES, InferenceConfig
from app.diameter import choose_scales, describe_scale_rule, size_estimate
from app.errors import InputError
from app.normalize import image_class, normalize, to_rgb
from app.plan import Planner, describe
from app.reader import list_inputs, read_image, skip_reason
from app.runner import ModelRunner, resolve_model
from app.segment import segment
from app.slides.source import is_slide
from app.timing import process_age, timed
from app.tolerance import penalised, tolerance
from app.writer import output_name, rows_csv, write_atomic, write_labels, write_text

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_IMAGE_FAILED = 1
# Stage columns the pipeline itself times, in data-path order; stages timed inside segment() follow them.
OWN_STAGES = ("read", "normalise", "estimate", "plan")
WRITE_STAGE = "write"
# The columns of --measure and the extras come last, so every earlier column keeps its place.
REPORT_COLUMNS = (
    "image", "output", "status", "message", "height", "width", "channels", "dtype", "fluorescence", "image_class",
    "diameter", "size_source", "scales", "stride", "flips", "plan", "cells", "seconds", "startup_s", "tolerance_s",
    "penalised_s",
    "median_area", "median_diameter", "extras",
)
# Columns only a streamed slide fills (app/slides); a report without slides does not have them.
SLIDE_COLUMNS = ("tissue_share", "tiles")


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
    extras: Collection[str] = (),
    classes: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Read → to_rgb → normalise → plan → segment → write one image, filling `row` and `timings` as it goes;
    then the requested `extras` (names of `EXTRA_SUFFIXES`) beside the label file (`write_extras`). `classes`:
    the instance thresholds of kinds of image tuned apart (`image_class`), used for segmenting this image when it
    is of one of those kinds (the size estimate keeps the common thresholds, as `app tune` does). A tiled slide
    above `cfg.slide_threshold_pixels` is streamed from the file instead (`app.slides.run.process_slide`)."""
    if is_slide(path, cfg):
        from app.slides.run import process_slide  # the slide modules load only when a slide comes

        process_slide(path, output, runner, planner, cfg, row, timings, extras, classes)
        return
    with timed(timings, "read"):
        image = read_image(path, cfg.max_pixels)
    height, width = image.shape[:2]
    row.update(height=height, width=width, channels=image.shape[2], dtype=str(image.dtype))

    with timed(timings, "normalise"):
        rgb = to_rgb(image)
        del image
        image_u8 = normalize(rgb, cfg)
        del rgb
        kind = image_class(image_u8, cfg)
        fluorescence = kind == "fluorescence"
    row.update(fluorescence=fluorescence, image_class=kind)

    # This kind's own settings (the manifest's thresholds, the mode's views and scales); the size estimate keeps
    # the common ones.
    kind_cfg = cfg.with_overrides(**(classes or {}).get(kind, {}))
    t0 = time.perf_counter()
    size = size_estimate(image_u8, runner, cfg, planner.estimate_allowed(height, width))
    timings["estimate"] = size.seconds
    scales = choose_scales(size, fluorescence, kind_cfg) if size.diameter is not None else None
    plan = planner.plan(height, width, fluorescence, scales, spent=size.seconds, cfg=kind_cfg)
    timings["plan"] = time.perf_counter() - t0 - size.seconds
    row.update(diameter=round(size.diameter, 1) if size.diameter is not None else "", size_source=size.source)
    row.update(scales="/".join(f"{s:g}" for s in plan.scales), stride=plan.stride, flips=plan.flips,
               plan=plan.reason, scales_desc=describe(plan.scales, plan.stride, plan.flips))

    labels = segment(image_u8, runner, plan, kind_cfg, timings)
    # A whole slide's normalised image is 300 MB: kept only for the extras that read it.
    kept = image_u8 if extra_outputs.NEEDS_IMAGE.intersection(extras) else None
    del image_u8
    if labels.shape != (height, width):
        raise RuntimeError(f"segmentation returned shape {labels.shape}, expected {(height, width)}")
    row["cells"] = int(labels.max()) if labels.size else 0

    with timed(timings, WRITE_STAGE):
        write_labels(output, labels)
    if extras:
        write_extras(path, output.parent, labels, kept, extras, cfg, row, timings)


def check_extras(names: Collection[str]) -> None:
    """ValueError naming any extra output that `EXTRA_SUFFIXES` does not know."""
    unknown = set(names) - set(EXTRA_SUFFIXES)
    if unknown:
        raise ValueError(f"unknown extra output(s) {', '.join(sorted(unknown))}; known: {', '.join(EXTRA_SUFFIXES)}")


def _image_for(extra: str, image_u8: np.ndarray | None) -> np.ndarray:
    """The normalised image an extra reads (`extra_outputs.NEEDS_IMAGE`); it must have been kept for it."""
    if image_u8 is None:
        raise ValueError(f"{extra} needs the normalised image, which was not kept")
    return image_u8


def write_extras(
    source: Path,
    folder: Path,
    labels: np.ndarray,
    image_u8: np.ndarray | None,
    names: Collection[str],
    cfg: InferenceConfig,
    row: dict[str, Any],
    timings: dict[str, float],
) -> list[str]:
    """Write the requested extras of one image into `folder`, in `EXTRA_SUFFIXES` order; return the failures.

    Each extra is caught on its own: a failure becomes one "<file>: <reason>" entry (also in row["message"]) and
    the others are still written. row["extras"] names the files written; `measure` adds the cell count and median
    area and diameter to `row`; `timings` gets one stage per extra (the cell outlines are traced once, by the
    first of rois and geojson).
    """
    check_extras(names)
    polygons: list[extra_outputs.CellPolygon] | None = None

    def write_one(name: str, target: Path) -> None:
        nonlocal polygons
        if name == "overlay":
            picture = extra_outputs.overlay(labels, _image_for(name, image_u8), cfg.overlay_max_side)
            write_atomic(target, partial(extra_outputs.write_png, picture=picture))
        elif name == "measure":
            table = extra_outputs.measure(labels, _image_for(name, image_u8))
            write_atomic(target, partial(extra_outputs.write_csv, table=table))
            row.update(extra_outputs.summary(table))
        else:
            polygons = extra_outputs.cell_polygons(labels) if polygons is None else polygons
            encode = extra_outputs.write_roi_zip if name == "rois" else extra_outputs.write_geojson
            write_atomic(target, partial(encode, polygons=polygons))

    return write_each_extra(source, folder, names, write_one, row, timings)


def write_each_extra(
    source: Path,
    folder: Path,
    names: Collection[str],
    write_one: Callable[[str, Path], None],
    row: dict[str, Any],
    timings: dict[str, float],
) -> list[str]:
    """`write_one(name, target)` for each requested extra, in `EXTRA_SUFFIXES` order, each timed as its own stage
    and caught on its own (an extra never costs the label file or the others): a failure becomes one
    "<file>: <reason>" entry of the returned list and of row["message"]; row["extras"] names the files written.
    Shared by images read whole (`write_extras`) and streamed slides (`app.slides.extras`)."""
    written: list[str] = []
    failures: list[str] = []
    for name in (n for n in EXTRA_SUFFIXES if n in names):
        target = folder / output_name(source, EXTRA_SUFFIXES[name])
        try:
            with timed(timings, name):
                write_one(name, target)
        except Exception as exc:  # noqa: BLE001 - reported, and the other extras are still written
            failures.append(f"{target.name}: {type(exc).__name__}: {exc}")
        else:
            written.append(target.name)
    row["extras"] = " ".join(written)
    if failures:
        row["message"] = "; ".join(failures)
    row["_extra_failures"] = failures
    return failures


def stage_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Per-stage CSV columns: the pipeline's own stages, those segment() reported (first-seen order), write, then
    the extras written."""
    seen: list[str] = []
    for row in rows:
        for key in row.get("_stages", {}):
            if key not in seen and key not in OWN_STAGES and key != WRITE_STAGE and key not in EXTRA_SUFFIXES:
                seen.append(key)
    extras = [k for k in EXTRA_SUFFIXES if any(k in row.get("_stages", {}) for row in rows)]
    return [f"{k}_s" for k in (*OWN_STAGES, *seen, WRITE_STAGE, *extras)]


def report_csv(rows: list[dict[str, Any]]) -> str:
    """The report as CSV text: one row per image, fixed columns then per-stage seconds."""
    stages = stage_columns(rows)
    columns = [*REPORT_COLUMNS, *(SLIDE_COLUMNS if any("tiles" in row for row in rows) else ())]
    lines: list[list[str]] = [[*columns, *stages]]
    for row in rows:
        cells = [_fmt(row.get(c, "")) for c in columns]
        times = row.get("_stages", {})
        cells += [_fmt(times[c[:-2]]) if c[:-2] in times else "" for c in stages]
        lines.append(cells)
    return rows_csv(lines)


def read_report(path: Path) -> list[dict[str, str]]:
    """The rows of a report written by `report_csv` ([] when there is none), for the benchmarks and checks."""
    path = Path(path)
    if not path.is_file():
        return []
    return list(csv.DictReader(io.StringIO(path.read_text())))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def size_text(row: dict[str, Any]) -> str:
    """"diameter 23.1 px (estimated)  " when the scales came from a diameter, else nothing."""
    if row.get("diameter") in (None, ""):
        return ""
    return f"diameter {row['diameter']:g} px ({row['size_source']})  "


def cells_text(row: dict[str, Any]) -> str:
    """"143 cells", with "(median area 412 px, diameter 22.9 px)" when they were measured (--measure)."""
    text = f"{row['cells']} cells"
    if row.get("median_area") not in (None, ""):
        text += f" (median area {row['median_area']:g} px, diameter {row['median_diameter']:g} px)"
    return text


def setting_text(value: Any) -> str:
    """A setting as the log shows it: numbers with :g, tuples as 0.8/1/1.2."""
    if isinstance(value, tuple):
        return "/".join(setting_text(v) for v in value)
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def slide_text(row: dict[str, Any]) -> str:
    """"tissue 2.1% (134/1600 tiles)  " for a streamed slide, else nothing."""
    if "tiles" not in row:
        return ""
    return f"tissue {100 * row['tissue_share']:.1f}% ({row['tiles']} tiles)  "


def log_line(row: dict[str, Any]) -> str:
    """The one line printed per image."""
    if row["status"] != "ok":
        return f"FAILED {row['message']}"
    extras = f" + {row['extras']}" if row.get("extras") else ""
    return (
        f"{row['image']}  {row['height']}x{row['width']}  {size_text(row)}{row['scales_desc']}  "
        f"{slide_text(row)}{cells_text(row)}  "
        f"{row['seconds']:.2f} s (+{row['startup_s']:.2f} s start-up)  tolerance {row['tolerance_s']:.1f} s  "
        f"penalised {row['penalised_s']:.2f} s  -> {row['output']}{extras}"
    )


def prepare_run(
    input_dir: Path | str,
    output_dir: Path | str,
    report: Path | str | None,
    extras: Collection[str],
) -> tuple[Path, Path, Path | None, list[Path]]:
    """Everything checked before the model loads: the extras asked for, the folders, the report's folder, and
    the input listing (skipped entries reported). Returns (input folder, output folder, report path, images);
    raises `SetupError`."""
    try:
        check_extras(extras)
    except ValueError as exc:
        raise SetupError(str(exc)) from exc
    inputs, outputs = check_folders(input_dir, output_dir)
    report_path = Path(report) if report is not None else None
    if report_path is not None:
        try:
            report_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SetupError(f"report folder {report_path.parent} cannot be created ({exc.strerror or exc})") from exc
    try:
        images, skipped = list_inputs(inputs)
    except OSError as exc:
        raise SetupError(f"input folder {inputs} cannot be listed ({exc.strerror or exc})") from exc
    for entry in skipped:
        # Sub-folders (labels/ beside images/, earlier outputs) and hidden files are normal in a data folder:
        # said only with --verbose. A file of another type, or a folder named like an image, is worth a warning.
        usual = entry.name.startswith(".") or (
            entry.is_dir() and entry.suffix.lower() not in CHALLENGE.image_extensions
        )
        log.log(logging.DEBUG if usual else logging.WARNING, "skipped %s: %s", entry.name, skip_reason(entry))
    if not images:
        log.warning(f"no images in {inputs} (extensions read: {' '.join(CHALLENGE.image_extensions)})")
    return inputs, outputs, report_path, images


def run_image(
    path: Path,
    output_dir: Path,
    runner: Any,
    planner: Any,
    cfg: InferenceConfig,
    extras: Collection[str],
    claimed: dict[str, str],
    startup: float,
    classes: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """`process_image` of one input with every failure caught: its report row, with the seconds, the
    tolerance and (when written) the penalised time. `claimed` maps output names to the inputs that took them,
    so two inputs never write the same file."""
    name = output_name(path)
    row: dict[str, Any] = {"image": path.name, "output": name, "status": "ok", "message": ""}
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    try:
        if name in claimed:
            raise InputError(path, f"output name {name} is already taken by {claimed[name]}; not overwriting")
        claimed[name] = path.name
        process_image(path, output_dir / name, runner, planner, cfg, row, timings, extras, classes)
    except InputError as exc:
        row.update(status="error", message=str(exc), output="")
    except Exception as exc:  # noqa: BLE001 - one image must not stop the others; reported, not hidden
        row.update(status="error", message=f"{path.name}: {type(exc).__name__}: {exc}", output="")
    seconds = time.perf_counter() - t0
    row["_stages"] = timings
    row["seconds"] = seconds
    if "height" in row:
        h, w = row["height"], row["width"]
        row["tolerance_s"] = tolerance(h, w)
        if row["status"] == "ok":
            row.update(startup_s=startup, penalised_s=penalised(seconds + startup, h, w))
    return row


def run_folder(
    input_dir: Path | str,
    output_dir: Path | str,
    model: Path | str,
    cfg: InferenceConfig,
    report: Path | str | None = None,
    *,
    extras: Collection[str] = (),
    classes: Mapping[str, Mapping[str, Any]] | None = None,
) -> int:
    """Segment every image of `input_dir` into `output_dir`; return the exit code (0 all written, 1 some image or
    requested extra failed). `extras`: names of `EXTRA_SUFFIXES` to write beside each label file; `classes`: the
    instance thresholds of kinds of image tuned apart (the manifest's `postprocess.classes`).

    Raises `SetupError` for folder problems, unknown extras and `app.errors.ModelError` for a model that cannot
    be used, all before any image is processed. Logs one INFO line per written image, an ERROR line per failure.
    """
    input_dir, output_dir, report_path, images = prepare_run(input_dir, output_dir, report, extras)

    runner = ModelRunner(resolve_model(model, cfg.device, cfg.precision), cfg.device, cfg.threads)
    startup = process_age()
    try:
        planner = Planner(runner, cfg, startup)
    except ValueError as exc:
        raise SetupError(str(exc)) from exc
    log.info(
        f"model {runner.path.name} on {runner.provider} ({runner.precision}); start-up {startup:.2f} s; "
        f"up to {cfg.flips} view(s), scales fused by {cfg.fusion}; "
        f"post-processing T_cell {cfg.cell_threshold:g} T_seed {cfg.seed_threshold:g} S_min {cfg.min_seed_area} "
        f"seed split {cfg.seed_split_height:g} S_rel {cfg.min_area_ratio:g}"
        + "".join(f"; {kind} images " + " ".join(f"{k} {setting_text(v)}" for k, v in fields.items())
                  for kind, fields in (classes or {}).items())
        + f"; {describe_scale_rule(cfg)}; {len(images)} image(s)"
    )

    rows: list[dict[str, Any]] = []
    claimed: dict[str, str] = {}
    failed = extras_failed = 0
    try:
        for path in tqdm(images, disable=None, file=sys.stderr, unit="image", leave=False):
            row = run_image(path, output_dir, runner, planner, cfg, extras, claimed, startup, classes)
            if row["status"] == "ok":
                log.info(log_line(row))
                for failure in row.get("_extra_failures", ()):
                    log.error(f"FAILED {failure}")
                extras_failed += len(row.get("_extra_failures", ()))
            else:
                failed += 1
                log.error(log_line(row))
            rows.append(row)
    finally:
        if report_path is not None:
            write_text(report_path, report_csv(rows))
    ok = len(rows) - failed
    log.info(f"{ok} of {len(rows)} image(s) written to {output_dir}" + (f"; {failed} failed" if failed else "")
         + (f"; {extras_failed} extra file(s) failed" if extras_failed else ""))
    return EXIT_IMAGE_FAILED if failed or extras_failed else EXIT_OK


__all__ = [
    "SetupError", "check_folders", "prepare_run", "process_image", "read_report", "report_csv", "run_folder",
    "run_image", "write_extras",
]
