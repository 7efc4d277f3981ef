"""One tile of a streamed slide, start to end: read its haloed crop from the file, lay out and normalise it by the
slide's decisions, predict, post-process, keep the cells it owns and store them.

This is the task the Dask graph runs (`app.slides.schedule`), in a thread of this process or in a worker
process of a cluster, so everything it needs travels in a small picklable `TileJob` and the model is opened once
per process (`runner_for`). The ownership rule is the whole-slide path's (`app.segment.owned_labels`): a cell
belongs to the tile whose core holds the centre of its bounding box, so every cell is stored by exactly one tile,
whole as long as it is smaller than the halo. Owned cells are numbered 1..k in the order of the crop's labels
and stored on the box they cover; global ids are given when the label file is written (`app.slides.store`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from app.config import InferenceConfig
from app.infer import Plan, predict_maps
from app.normalize import apply_ranges, apply_sources
from app.postprocess import instance_map
from app.segment import cut_by_halo, owned_labels
from app.slides.record import save_part
from app.slides.source import Slide, shared_slide
from app.tiling import Tile


@dataclass(frozen=True)
class ModelSpec:
    """How a worker opens the model: file, device and ONNX Runtime threads (`app.runner.ModelRunner`)."""

    path: str
    device: str
    threads: int


@dataclass(frozen=True)
class SlideWork:
    """What every tile of one slide shares: where to read and store, how to prepare pixels, the plan."""

    source: str
    parts: str
    height: int
    width: int
    sources: tuple[int | None, ...]
    ranges: tuple[tuple[float, float] | None, ...]
    plan: Plan
    cfg: InferenceConfig
    model: ModelSpec


@dataclass(frozen=True)
class TileJob:
    work: SlideWork
    index: int
    tile: Tile


@dataclass(frozen=True)
class TileResult:
    """A tile done: its owned cells, how many of them the halo may have cut, and its per-stage seconds."""

    index: int
    cells: int
    cut: int
    timings: dict[str, float] = field(default_factory=dict)


class OneAtATime:
    """A model shared by the threads of a process that runs one batch at a time (`app.infer.Runner`).

    ONNX Runtime already spreads one run over the cores, and each run in flight holds the network's activations
    (about 0.45 GB for a 1024 x 1024 tile): two tiles through the model at once cost that twice and gain nothing
    on a CPU. The other threads read, normalise and post-process their tiles meanwhile (as the in-memory
    whole-slide path overlaps its stages)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.provider = runner.provider
        self.input_hw = runner.input_hw
        self._lock = threading.Lock()

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with self._lock:
            return self.runner.run(batch)


_RUNNERS: dict[ModelSpec, OneAtATime] = {}
_RUNNERS_LOCK = threading.Lock()


def runner_for(spec: ModelSpec) -> OneAtATime:
    """This process's session of the model (`register`ed by the caller in this process, else opened once)."""
    with _RUNNERS_LOCK:
        if spec not in _RUNNERS:
            from app.runner import ModelRunner

            _RUNNERS[spec] = OneAtATime(ModelRunner(spec.path, spec.device, spec.threads))
        return _RUNNERS[spec]


def register(spec: ModelSpec, runner: Any) -> None:
    """Let threads of this process use a session that is already open (the pipeline's)."""
    with _RUNNERS_LOCK:
        _RUNNERS[spec] = OneAtATime(runner)


def unregister(spec: ModelSpec) -> None:
    with _RUNNERS_LOCK:
        _RUNNERS.pop(spec, None)


def owned_part(labels: np.ndarray, tile: Tile, height: int, width: int) -> tuple[np.ndarray, tuple[int, int], int, int]:
    """The cells of a crop's label map that `tile` owns, numbered 1..k on the box they cover: (labels of that
    box, its global top-left, k, owned cells that touch an inner edge of the crop)."""
    boxes = ndimage.find_objects(labels)
    owned = owned_labels(labels, tile, boxes)
    cut = cut_by_halo(boxes, owned, tile, height, width)
    if owned.size == 0:
        return np.zeros((0, 0), np.uint16), (tile.crop[0], tile.crop[2]), 0, 0
    rows = [boxes[int(i) - 1][0] for i in owned]
    cols = [boxes[int(i) - 1][1] for i in owned]
    y0, y1 = min(r.start for r in rows), max(r.stop for r in rows)
    x0, x1 = min(c.start for c in cols), max(c.stop for c in cols)
    dtype = np.uint16 if owned.size <= np.iinfo(np.uint16).max else np.uint32
    lut = np.zeros(int(labels.max()) + 1, dtype=dtype)
    lut[owned] = np.arange(1, owned.size + 1, dtype=dtype)
    part = lut[labels[y0:y1, x0:x1]]
    return part, (tile.crop[0] + y0, tile.crop[2] + x0), int(owned.size), cut


def tile_pixels(slide: Slide, tile: Tile, work: SlideWork) -> np.ndarray:
    """A tile's haloed crop as the model gets it: uint8 H×W×3 by the slide's channel rule and ranges."""
    y0, y1, x0, x1 = tile.crop
    return apply_ranges(apply_sources(slide.read(y0, y1, x0, x1), work.sources), work.ranges)


def segment_tile(job: TileJob) -> TileResult:
    """Segment one tile and store the cells it owns; the Dask task."""
    work, tile = job.work, job.tile
    timings: dict[str, float] = {}
    start = time.perf_counter()
    image_u8 = tile_pixels(shared_slide(work.source), tile, work)
    timings["read"] = time.perf_counter() - start
    cell, boundary = predict_maps(image_u8, runner_for(work.model), work.plan, work.cfg, timings)
    del image_u8
    start = time.perf_counter()
    labels = instance_map(cell, boundary, work.cfg, work.plan.view_scale)
    del cell, boundary
    part, top_left, cells, cut = owned_part(labels, tile, work.height, work.width)
    timings["postprocess"] = time.perf_counter() - start
    start = time.perf_counter()
    if cells:
        save_part(Path(work.parts), job.index, top_left, part)
    timings["store"] = time.perf_counter() - start
    return TileResult(job.index, cells, cut, timings)


__all__ = ["ModelSpec", "OneAtATime", "SlideWork", "TileJob", "TileResult", "owned_part", "register", "runner_for",
           "segment_tile", "tile_pixels", "unregister"]
