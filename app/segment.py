"""One image to one label map: the whole image at once, or the whole-slide path in haloed tiles.

Small images go through `predict_maps` and `instance_map` directly. Images above `cfg.tile_threshold_pixels`
are cut into cores of `cfg.tile_size` pixels; each core is predicted and post-processed together with a halo
of `cfg.tile_halo` pixels, and a tile keeps only the instances it *owns*. The owner point of an instance is the
centre of its bounding box, ``(min + max) // 2`` per axis in global coordinates: every instance has exactly one,
and the cores partition the image, so exactly one tile pastes each cell and no cell is cut at a seam as long as
cells are smaller than the halo (an owned cell that reaches an inner edge of its crop may be cut, and a warning
says how many did). Kept instances get global ids from a running offset in a uint32 map; only one
tile's float maps exist at a time (per tile in flight), so memory is the input, the label map and a few tiles.

Stages overlap: while the main thread runs the model on tile i (ONNX Runtime releases the GIL), a small thread
pool post-processes the tiles before it; labels are pasted in tile order, so the result is deterministic.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from scipy import ndimage

from app.config import InferenceConfig
from app.infer import Plan, predict_maps
from app.postprocess import instance_map
from app.tiling import Tile, is_whole_slide, tile_grid
from app.timing import add_seconds, timed

log = logging.getLogger(__name__)


def owned_labels(labels: np.ndarray, tile: Tile, boxes: list | None = None) -> np.ndarray:
    """Ids in a crop's label map whose owner point (bounding-box centre, global coordinates) is in the core
    (`boxes`: `ndimage.find_objects(labels)`, when the caller has it already)."""
    cy0, _, cx0, _ = tile.crop
    y0, y1, x0, x1 = tile.core
    boxes = ndimage.find_objects(labels) if boxes is None else boxes
    keep = []
    for index, box in enumerate(boxes, start=1):
        if box is None:
            continue
        oy = cy0 + (box[0].start + box[0].stop - 1) // 2
        ox = cx0 + (box[1].start + box[1].stop - 1) // 2
        if y0 <= oy < y1 and x0 <= ox < x1:
            keep.append(index)
    return np.asarray(keep, dtype=np.int64)


def cut_by_halo(boxes: list, owned: np.ndarray, tile: Tile, height: int, width: int) -> int:
    """How many owned instances touch an edge of the crop that lies inside the image: they may extend past
    the halo, so the tile saw only part of them (a halo larger than the largest cell keeps this at 0)."""
    cy0, cy1, cx0, cx1 = tile.crop
    local_h, local_w = cy1 - cy0, cx1 - cx0
    cut = 0
    for index in owned:
        rows, cols = boxes[int(index) - 1]
        if ((rows.start == 0 and cy0 > 0) or (rows.stop == local_h and cy1 < height)
                or (cols.start == 0 and cx0 > 0) or (cols.stop == local_w and cx1 < width)):
            cut += 1
    return cut


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


def segment_whole(
    image_u8: np.ndarray, runner, plan: Plan, cfg: InferenceConfig, timings: dict[str, float] | None = None
) -> np.ndarray:
    """predict_maps at the plan's scales, stride and flipped views, then MT2's watershed; int32 labels."""
    cell, boundary = predict_maps(image_u8, runner, plan, cfg, timings)
    with timed(timings, "postprocess"):
        return instance_map(cell, boundary, cfg, plan.view_scale)


def _post_tile(
    cell: np.ndarray, boundary: np.ndarray, tile: Tile, cfg: InferenceConfig, hw: tuple[int, int], view_scale: float
):
    """Worker: watershed of one haloed tile, its owned ids and how many of them the halo cut; returns
    (labels, owned, cut, seconds)."""
    t0 = time.perf_counter()
    labels = instance_map(cell, boundary, cfg, view_scale)
    boxes = ndimage.find_objects(labels)
    owned = owned_labels(labels, tile, boxes)
    cut = cut_by_halo(boxes, owned, tile, *hw)
    return labels, owned, cut, time.perf_counter() - t0


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
    cut_cells = 0

    def paste(tile: Tile, result) -> None:
        nonlocal offset, cut_cells
        labels, owned, cut, seconds = result
        cut_cells += cut
        add_seconds(timings, "postprocess", seconds)
        with timed(timings, "paste"):
            offset = paste_owned(out, labels, owned, tile, offset)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mt2-post") if workers > 0 else None
    try:
        for tile in tiles:
            y0, y1, x0, x1 = tile.crop
            crop = image_u8[y0:y1, x0:x1]
            cell, boundary = predict_maps(crop, runner, plan, cfg, timings)
            if pool is None:
                paste(tile, _post_tile(cell, boundary, tile, cfg, (h, w), plan.view_scale))
                continue
            pending.append((tile, pool.submit(_post_tile, cell, boundary, tile, cfg, (h, w), plan.view_scale)))
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
    if cut_cells:
        log.warning("%d cell(s) reach past the %d px tile halo and may be cut at tile seams: a larger "
                    "--tile-halo keeps them whole", cut_cells, cfg.tile_halo)
    return out


def segment(
    image_u8: np.ndarray, runner, plan: Plan, cfg: InferenceConfig, timings: dict[str, float] | None = None
) -> np.ndarray:
    """Label map of one normalised uint8 H×W×3 image: int32 whole, uint32 on the whole-slide path."""
    if image_u8.ndim != 3 or image_u8.shape[2] != 3 or image_u8.dtype != np.uint8:
        raise ValueError(f"segment needs a uint8 H×W×3 image, got {image_u8.dtype} {image_u8.shape}")
    h, w = image_u8.shape[:2]
    if not is_whole_slide(h, w, cfg):
        return segment_whole(image_u8, runner, plan, cfg, timings)
    return segment_tiled(image_u8, runner, plan, cfg, timings)
