"""What a streamed slide has done so far, kept beside its output so that a killed run continues where it stopped.

Two hidden things sit beside `<name>_label.tiff` while a slide runs:

- `.<name>_label.tiff.parts/`: one file per segmented tile, its owned cells numbered 1..k on the box they cover
  (a tile's result, written atomically by whoever segmented it);
- `.<name>_label.tiff.progress.json`: the progress record, written atomically: a fingerprint of everything the
  labels depend on (input file, model, settings), the slide's analysis (channel rule, normalisation ranges,
  image kind, cell size, plan, tissue tiles) and the cell count of every tile done.

A run that finds a record with its own fingerprint takes the analysis from it instead of redoing it (a measured
time budget could choose another plan) and segments only the tiles not yet recorded, so the labels are those of
an uninterrupted run. A tile whose part was written but not yet recorded is simply segmented again. Both are
removed once the label file is in place.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from app.config import InferenceConfig
from app.infer import Plan
from app.manifest import sha256_file
from app.writer import TEMP_SUFFIX, write_atomic, write_text

RECORD_VERSION = 1
PARTS_SUFFIX = ".parts"
RECORD_SUFFIX = ".progress.json"
# Settings that decide where and how fast tiles run, never what they produce: a run may resume with others.
EXECUTION_FIELDS = frozenset({"scheduler", "workers", "slide_threads", "threads", "tile_workers", "slide_resume"})


@dataclass(frozen=True)
class SlideAnalysis:
    """Decisions taken once per slide before any tile runs, so that every tile (and a resumed run) uses them."""

    sources: tuple[int | None, ...]  # app.normalize.channel_sources of the overview
    ranges: tuple[tuple[float, float] | None, ...]  # app.normalize.channel_ranges of the overview
    kind: str  # app.normalize.image_class
    diameter: float | None
    size_source: str
    plan: Plan
    tissue: tuple[int, ...]  # indices of the tiles to segment (app.slides.tissue.tissue_tiles)
    tissue_share: float  # share of the overview that is tissue
    tiles: int  # tiles in the grid


@dataclass
class Progress:
    """The progress record: fingerprint, analysis and {tile index: owned cells} of the tiles done."""

    fingerprint: str
    analysis: SlideAnalysis
    done: dict[int, int] = field(default_factory=dict)


def record_paths(output: Path) -> tuple[Path, Path]:
    """(progress record, parts folder) of a label file."""
    return output.parent / f".{output.name}{RECORD_SUFFIX}", output.parent / f".{output.name}{PARTS_SUFFIX}"


def file_identity(path: Path) -> dict[str, Any]:
    """Name, size and modification time of a file: a changed file is another input."""
    stat = path.stat()
    return {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def fingerprint(source: Path, model: Path, provider: str, cfg: InferenceConfig,
                classes: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """sha256 of everything a slide's labels depend on: the input file, the model and where it runs, and every
    setting but those that only decide where tiles run (`EXECUTION_FIELDS`)."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in EXECUTION_FIELDS}
    what = {"version": RECORD_VERSION, "input": file_identity(source), "model": sha256_file(model),
            "provider": provider, "settings": settings, "classes": classes or {}}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _analysis_json(analysis: SlideAnalysis) -> dict[str, Any]:
    data = asdict(analysis)
    data["plan"] = asdict(analysis.plan)
    return data


def _analysis_from(data: dict[str, Any]) -> SlideAnalysis:
    plan = data["plan"]
    return SlideAnalysis(
        sources=tuple(data["sources"]),
        ranges=tuple(None if r is None else (float(r[0]), float(r[1])) for r in data["ranges"]),
        kind=str(data["kind"]),
        diameter=None if data["diameter"] is None else float(data["diameter"]),
        size_source=str(data["size_source"]),
        plan=Plan(tuple(float(s) for s in plan["scales"]), int(plan["stride"]), str(plan["reason"]),
                  int(plan["flips"])),
        tissue=tuple(int(i) for i in data["tissue"]),
        tissue_share=float(data["tissue_share"]),
        tiles=int(data["tiles"]),
    )


def save_progress(path: Path, progress: Progress) -> None:
    """Write the record atomically (a reader sees the old record or the new one, never half of one)."""
    data = {"version": RECORD_VERSION, "fingerprint": progress.fingerprint,
            "analysis": _analysis_json(progress.analysis),
            "done": {str(index): cells for index, cells in sorted(progress.done.items())}}
    write_text(path, json.dumps(data, separators=(",", ":")))


def load_progress(path: Path, expected: str) -> Progress | None:
    """The record at `path` when it exists, is readable and has the `expected` fingerprint; else None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != RECORD_VERSION or data.get("fingerprint") != expected:
            return None
        done = {int(index): int(cells) for index, cells in data["done"].items()}
        return Progress(expected, _analysis_from(data["analysis"]), done)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear(output: Path) -> None:
    """Remove a label file's record, parts and the temporary files a killed write left beside it."""
    record, parts = record_paths(output)
    record.unlink(missing_ok=True)
    shutil.rmtree(parts, ignore_errors=True)
    for stale in output.parent.glob(f".{glob.escape(output.name)}.*{TEMP_SUFFIX}"):
        stale.unlink(missing_ok=True)
    for stale in output.parent.glob(f".{glob.escape(record.name)}.*{TEMP_SUFFIX}"):
        stale.unlink(missing_ok=True)


def part_path(parts: Path, index: int) -> Path:
    return parts / f"{index}.npz"


def save_part(parts: Path, index: int, top_left: tuple[int, int], labels: np.ndarray) -> None:
    """Store a tile's owned cells (numbered 1..k) on the box they cover, whose global top-left is `top_left`."""
    os.makedirs(parts, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, labels=labels, top_left=np.asarray(top_left, np.int64))
    write_atomic(part_path(parts, index), lambda handle: handle.write(buffer.getbuffer()))


def load_part(parts: Path, index: int) -> tuple[tuple[int, int], np.ndarray]:
    """(global top-left, labels) of a stored tile."""
    with np.load(part_path(parts, index)) as stored:
        y, x = (int(v) for v in stored["top_left"])
        return (y, x), stored["labels"]


__all__ = [
    "EXECUTION_FIELDS", "Progress", "SlideAnalysis", "clear", "fingerprint", "load_part", "load_progress",
    "record_paths", "save_part", "save_progress",
]
