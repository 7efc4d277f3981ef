"""One image to one label map: the whole image at once, or the whole-slide path in haloed tiles.

Small images go through `predict_maps` and `instance_map` directly. Images above `cfg.tile_threshold_pixels`
are cut into cores of `cfg.tile_size` pixels; each core is predicted and post-processed together with a halo
of `cfg.tile_halo` pixels, and a tile keeps only the instances it *owns*. The owner point of an instance is the
centre of its bounding box, ``(min + max) // 2`` per axis in global coordinates: every instance has exactly one,
and the cores partition the image, so exactly one tile pastes each cell and no cell is cut at a seam as long as
cells are smaller than the halo. Kept instances get global ids from a running offset in a uint32 map; only one
tile's float maps exist at a time (per tile in flight), so memory is the input, the label map and a few tiles.

Stages overlap: while the main thread runs the model on tile i (ONNX Runtime releases the GIL), a small thread
pool post-processes the tiles before it; labels are pasted in tile order, so the result is deterministic.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from app.config import InferenceConfig
from app.infer import predict_maps
from app.plan import Plan
from app.postprocess import instance_map


@dataclass(frozen=True)
class Tile:
    """A core (owned pixels) and its haloed crop, as (y0, y1, x0, x1) boxes in global coordinates."""

    core: tuple[int, int, int, int]
    crop: tuple[int, int, int, int]


def tile_grid(h: int, w: int, size: int, halo: int) -> list[Tile]:
    """Cores of `size` x `size` covering an h x w image in raster order, each with a `halo` clipped to the image."""
    if size <= 0 or halo < 0:
        raise ValueError(f"tile size must be positive and halo non-negative, got size={size}, halo={halo}")
    tiles = []
    for y0 in range(0, h, size):
        for x0 in range(0, w, size):
            y1, x1 = min(h, y0 + size), min(w, x0 + size)
            crop = (max(0, y0 - halo), min(h, y1 + halo), max(0, x0 - halo), min(w, x1 + halo))
            tiles.append(Tile((y0, y1, x0, x1), crop))
    return tiles


def owned_labels(labels: np.ndarray, tile: Tile) -> np.ndarray:
    """Ids in a crop's label map whose owner point (bounding-box centre, global coordinates) is in the core."""
    cy0, _, cx0, _ = tile.crop
    y0, y1, x0, x1 = tile.core
    boxes = ndimage.find_objects(labels)
    keep = []
    for index, box in enumerate(boxes, start=1):
        if box is None:
            continue
        oy = cy0 + (box[0].start + box[0].stop - 1) // 2
        ox = cx0 + (box[1].start + box[1].stop - 1) // 2
        if y0 <= oy < y1 and x0 <= ox < x1:
            keep.append(index)
    return np.asarray(keep, dtype=np.int64)


def paste_owned(
    out: np.ndarray, labels: np.ndarray, owned: np.ndarray, tile: Tile, offset: int
) -> int:
    """Write the owned instances into `out` (in place) as offset+1, offset+2, ...; return the new offset.

    Pixels already claimed by a cell of an earlier tile are left to it, so no instance overwrites another.
    """
    if owned.size == 0:
        return offset
    lut = np.zeros(int(labels.max()) + 1, dtype=out.dtype)
    lut[owned] = np.arange(offset + 1, offset + 1 + owned.size, dtype=out.dtype)
    fresh = lut[labels]
    y0, y1, x0, x1 = tile.crop
    region = out[y0:y1, x0:x1]
    write = (fresh != 0) & (region == 0)
    region[write] = fresh[write]
    return offset + int(owned.size)


def _add(timings: dict[str, float] | None, key: str, seconds: float) -> None:
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + seconds


def segment_whole(
    image_u8: np.ndarray, runner, plan: Plan, cfg: InferenceConfig, timings: dict[str, float] | None = None
) -> np.ndarray:
    """predict_maps at the plan's scales, stride and flipped views, then MT2's watershed; int32 labels."""
    cell, boundary = predict_maps(image_u8, runner, plan.scales, cfg, plan.stride, timings, plan.flips)
    t0 = time.perf_counter()
    labels = instance_map(cell, boundary, cfg)
    _add(timings, "postprocess", time.perf_counter() - t0)
    return labels


def _post_tile(cell: np.ndarray, boundary: np.ndarray, tile: Tile, cfg: InferenceConfig):
    """Worker: watershed of one haloed tile and its owned ids; returns (labels, owned, seconds)."""
    t0 = time.perf_counter()
    labels = instance_map(cell, boundary, cfg)
    owned = owned_labels(labels, tile)
    return labels, owned, time.perf_counter() - t0


def segment_tiled(
    image_u8: np.ndarray,
    runner,
    plan: Plan,
    cfg: InferenceConfig,
    timings: dict[str, float] | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """The whole-slide path: haloed tiles, one owner per cell, global ids; uint32 labels.

    `workers` threads post-process tiles while the main thread runs the model on the next one (0 runs
    everything in order on the calling thread); default `cfg.tile_workers`.
    """
    h, w = image_u8.shape[:2]
    workers = cfg.tile_workers if workers is None else workers
    out = np.zeros((h, w), dtype=np.uint32)
    offset = 0
    tiles = tile_grid(h, w, cfg.tile_size, cfg.tile_halo)
    pending: deque[tuple[Tile, Future]] = deque()

    def paste(tile: Tile, result) -> None:
        nonlocal offset
        labels, owned, seconds = result
        _add(timings, "postprocess", seconds)
        t0 = time.perf_counter()
        offset = paste_owned(out, labels, owned, tile, offset)
        _add(timings, "paste", time.perf_counter() - t0)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mt2-post") if workers > 0 else None
    try:
        for tile in tiles:
            y0, y1, x0, x1 = tile.crop
            crop = image_u8[y0:y1, x0:x1]
            cell, boundary = predict_maps(crop, runner, plan.scales, cfg, plan.stride, timings, plan.flips)
            if pool is None:
                paste(tile, _post_tile(cell, boundary, tile, cfg))
                continue
            pending.append((tile, pool.submit(_post_tile, cell, boundary, tile, cfg)))
            del cell, boundary
            while len(pending) > workers:
                done_tile, future = pending.popleft()
                paste(done_tile, future.result())
        while pending:
            done_tile, future = pending.popleft()
            paste(done_tile, future.result())
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return out


def segment(
    image_u8: np.ndarray, runner, plan: Plan, cfg: InferenceConfig, timings: dict[str, float] | None = None
) -> np.ndarray:
    """Label map of one normalised uint8 H×W×3 image: int32 whole, uint32 on the whole-slide path."""
    if image_u8.ndim != 3 or image_u8.shape[2] != 3 or image_u8.dtype != np.uint8:
        raise ValueError(f"segment needs a uint8 H×W×3 image, got {image_u8.dtype} {image_u8.shape}")
    h, w = image_u8.shape[:2]
    if h * w <= cfg.tile_threshold_pixels:
        return segment_whole(image_u8, runner, plan, cfg, timings)
    return segment_tiled(image_u8, runner, plan, cfg, timings)
