"""One streamed slide end to end: analyse it once, segment its tissue tiles as a Dask graph, write its labels.

1. **analyse** (or take the analysis from a matching progress record): the overview (`Slide.overview`) shows
   where the tissue is (`app.slides.tissue`); a full-resolution sample of the tissue tiles gives the channel
   rule, the normalisation ranges and the kind of image, for every tile alike; the cell size is estimated on
   the densest tissue (`app.diameter.size_estimate`) and the planner chooses scales, stride and views for the
   tissue tiles only (`Planner.plan` with their shapes);
2. **segment**: one task per tissue tile not yet done (`app.slides.schedule`), each storing the cells it owns;
   the progress record is rewritten as they finish (at most every `RECORD_SECONDS`, and on the way out);
3. **write** the label BigTIFF band by band (`app.slides.store`), then the streamed extras
   (`app.slides.extras`), then drop the record and the parts.

The pipeline calls `process_slide` instead of its in-memory path for inputs that `app.slides.source.is_slide`
accepts; the report
row and the log line get the same fields, plus the tissue share and the tile count.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Collection, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from app.config import InferenceConfig
from app.diameter import choose_scales, look_side, size_estimate
from app.errors import InputError
from app.normalize import apply_ranges, apply_sources, channel_ranges, channel_sources, image_class
from app.plan import describe
from app.slides.extras import write_slide_extras
from app.slides.record import (
    Progress,
    SlideAnalysis,
    clear,
    fingerprint,
    load_progress,
    record_paths,
    save_progress,
)
from app.slides.schedule import cluster, distributed, run_graph, worker_threads
from app.slides.source import Slide, close_shared
from app.slides.store import label_bands, write_streamed_labels
from app.slides.tiles import ModelSpec, SlideWork, TileJob, TileResult, register, unregister
from app.slides.tissue import densest_point, tissue_mask, tissue_tiles
from app.tiling import Tile, tile_grid
from app.timing import add_seconds, timed

log = logging.getLogger(__name__)

RECORD_SECONDS = 1.0  # the progress record is rewritten at most this often while tiles finish
SAMPLE_TILES = 64  # tissue tiles read at full resolution for the normalisation ranges


def slide_class(overview_u8: np.ndarray, height: int, width: int, cfg: InferenceConfig) -> str:
    """`image_class` of the slide from its overview; fluorescence only below `cfg.fluorescence_max_side`, measured
    on the slide, as for an image read whole."""
    kind = image_class(overview_u8, cfg)
    if kind == "fluorescence" and max(height, width) >= cfg.fluorescence_max_side:
        return "grey"
    return kind


def tissue_sample(slide: Slide, tiles: list[Tile], tissue: list[int], max_pixels: int) -> np.ndarray:
    """Full-resolution pixels of the tissue, for the channel rule and the normalisation ranges: the cores of up
    to `SAMPLE_TILES` tissue tiles spread evenly over the list, each read every k-th row and column so that
    the sample holds about `max_pixels` (as `app.normalize.sample` does for an image read whole), as an N×1×C
    column. Whole-slide percentiles would be the glass's: on a slide that is 99% glass the 1st percentile is
    glass too, and the cells would be crushed to black."""
    picked = [tissue[round(i * len(tissue) / min(len(tissue), SAMPLE_TILES))]
              for i in range(min(len(tissue), SAMPLE_TILES))]
    cores = [tiles[i].core for i in picked]
    area = sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in cores)
    step = max(1, math.ceil(math.sqrt(area / max(1, max_pixels))))
    parts = [slide.read(y0, y1, x0, x1, step=step) for y0, y1, x0, x1 in cores]
    return np.concatenate([part.reshape(-1, 1, part.shape[2]) for part in parts])


def estimate_region(slide: Slide, mask: np.ndarray, factor: tuple[float, float], sources: tuple[int | None, ...],
                    ranges: tuple[tuple[float, float] | None, ...], cfg: InferenceConfig) -> np.ndarray:
    """The normalised square, as large as the coarsest diameter look needs, centred where the looks' central
    squares hold the most tissue."""
    sides = [look_side(scale, cfg) for scale in cfg.estimate_scales]
    side = max(sides)
    cy, cx = densest_point(mask, factor, sides)
    y0 = min(max(0, cy - side // 2), max(0, slide.height - side))
    x0 = min(max(0, cx - side // 2), max(0, slide.width - side))
    pixels = slide.read(y0, min(slide.height, y0 + side), x0, min(slide.width, x0 + side))
    return apply_ranges(apply_sources(pixels, sources), ranges)


def analyse(slide: Slide, tiles: list[Tile], runner: Any, planner: Any, cfg: InferenceConfig,
            timings: dict[str, float], classes: Mapping[str, Mapping[str, Any]] | None = None) -> SlideAnalysis:
    """Every decision taken once per slide (module docstring, step 1); `classes` as for
    `app.pipeline.process_image` (this kind's views and scales; the size estimate keeps the common settings)."""
    height, width = slide.height, slide.width
    with timed(timings, "read"):
        overview = slide.overview(cfg.slide_overview_pixels)
    with timed(timings, "tissue"):
        rgb = apply_sources(overview.pixels, channel_sources(overview.pixels))
        mask = tissue_mask(apply_ranges(rgb, channel_ranges(rgb, cfg)), cfg.slide_tissue_contrast)
        tissue = tissue_tiles(mask, overview.factor, tiles)
    with timed(timings, "normalise"):
        pixels = tissue_sample(slide, tiles, tissue, cfg.norm_sample_pixels) if tissue else overview.pixels
        sources = channel_sources(pixels)
        ranges = channel_ranges(apply_sources(pixels, sources), cfg)
        kind = slide_class(apply_ranges(apply_sources(pixels, sources), ranges), height, width, cfg)
    fluorescence = kind == "fluorescence"
    kind_cfg = cfg.with_overrides(**(classes or {}).get(kind, {}))
    start = time.perf_counter()
    allowed = planner.estimate_allowed(height, width)
    looks = cfg.scale_mode == "adaptive" and cfg.diameter <= 0 and allowed and bool(tissue)
    region = (estimate_region(slide, mask, overview.factor, sources, ranges, cfg) if looks
              else np.zeros((0, 0, 3), np.uint8))
    size = size_estimate(region, runner, cfg, allowed and bool(tissue))
    del region
    timings["estimate"] = time.perf_counter() - start
    scales = choose_scales(size, fluorescence, kind_cfg) if size.diameter is not None else None
    start = time.perf_counter()
    area = sum((t.core[1] - t.core[0]) * (t.core[3] - t.core[2]) for t in (tiles[i] for i in tissue))
    plan = planner.plan(height, width, fluorescence, scales, spent=timings["estimate"],
                        shapes=[tiles[i].crop_shape for i in tissue], pixels=area, cfg=kind_cfg)
    timings["plan"] = time.perf_counter() - start
    return SlideAnalysis(sources=tuple(sources), ranges=tuple(ranges), kind=kind, diameter=size.diameter,
                         size_source=size.source, plan=plan, tissue=tuple(tissue),
                         tissue_share=float(mask.mean()) if mask.size else 0.0, tiles=len(tiles))


def describe_analysis(row: dict[str, Any], analysis: SlideAnalysis) -> None:
    """The report fields of a slide's analysis (as `app.pipeline.process_image` fills them for an image)."""
    plan = analysis.plan
    row.update(fluorescence=analysis.kind == "fluorescence", image_class=analysis.kind,
               diameter=round(analysis.diameter, 1) if analysis.diameter is not None else "",
               size_source=analysis.size_source, scales="/".join(f"{s:g}" for s in plan.scales),
               stride=plan.stride, flips=plan.flips, plan=plan.reason,
               scales_desc=describe(plan.scales, plan.stride, plan.flips),
               tissue_share=round(analysis.tissue_share, 4), tiles=f"{len(analysis.tissue)}/{analysis.tiles}")


def segment_tiles(path: Path, progress: Progress, record: Path, work: SlideWork, tiles: list[Tile],
                  cfg: InferenceConfig, timings: dict[str, float]) -> int:
    """Run the tissue tiles not yet done, recording each as it finishes; the owned cells the halo may have cut."""
    todo = [TileJob(work, i, tiles[i]) for i in progress.analysis.tissue if i not in progress.done]
    cut = 0
    saved = time.monotonic()
    bar = tqdm(total=len(progress.analysis.tissue), initial=len(progress.analysis.tissue) - len(todo),
               disable=None, file=sys.stderr, unit="tile", leave=False, desc=path.name)

    def done(result: TileResult) -> None:
        nonlocal cut, saved
        progress.done[result.index] = result.cells
        cut += result.cut
        for stage, seconds in result.timings.items():
            add_seconds(timings, "tile_read" if stage == "read" else stage, seconds)
        bar.update(1)
        if time.monotonic() - saved >= RECORD_SECONDS:
            save_progress(record, progress)
            saved = time.monotonic()

    try:
        with timed(timings, "segment"), cluster(cfg) as client:
            run_graph(todo, cfg, done, client)
    finally:
        close_shared()
        bar.close()
        save_progress(record, progress)
    return cut


def process_slide(
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
    """Segment one tiled slide into `output` (module docstring), filling `row` and `timings` as
    `app.pipeline.process_image` does; extras asked for are written by `write_slide_extras`. A slide that
    cannot be read (`InputError`) leaves nothing behind; any other failure (or a kill) leaves the progress record
    and the tiles done for the next run."""
    try:
        _process_slide(path, output, runner, planner, cfg, row, timings, extras, classes)
    except InputError:
        clear(output)
        raise


def _process_slide(path: Path, output: Path, runner: Any, planner: Any, cfg: InferenceConfig, row: dict[str, Any],
                   timings: dict[str, float], extras: Collection[str],
                   classes: Mapping[str, Mapping[str, Any]] | None) -> None:
    record, parts = record_paths(output)
    with Slide(path) as slide:
        height, width = slide.height, slide.width
        row.update(height=height, width=width, channels=slide.channels, dtype=str(slide.dtype))
        tiles = tile_grid(height, width, cfg.slide_tile_size, cfg.slide_tile_halo)
        key = fingerprint(path, Path(runner.path), runner.provider, cfg, classes)
        progress = load_progress(record, key) if cfg.slide_resume else None
        if progress is None:
            clear(output)
            progress = Progress(key, analyse(slide, tiles, runner, planner, cfg, timings, classes))
            save_progress(record, progress)
        else:
            log.info("%s: resuming from %s, %d of %d tissue tile(s) already done", path.name, record.name,
                     len(progress.done), len(progress.analysis.tissue))
    analysis = progress.analysis
    describe_analysis(row, analysis)
    local = ModelSpec(str(runner.path), cfg.device, cfg.threads)
    spec = replace(local, threads=worker_threads(cfg)) if distributed(cfg) else local
    tile_cfg = cfg.with_overrides(**(classes or {}).get(analysis.kind, {}))
    work = SlideWork(str(path), str(parts), height, width, analysis.sources, analysis.ranges, analysis.plan,
                     tile_cfg, spec)
    register(local, runner)
    try:
        cut = segment_tiles(path, progress, record, work, tiles, cfg, timings)
    finally:
        unregister(local)
    if cut:
        log.warning("%d cell(s) reach past the %d px tile halo and may be cut at tile seams: a larger "
                    "--slide-tile-halo keeps them whole", cut, cfg.slide_tile_halo)
    cells = sum(progress.done.values())
    with timed(timings, "write"):
        write_streamed_labels(output, height, width,
                              lambda: label_bands(tiles, progress.done, parts, width, cfg.slide_write_tile),
                              cells, cfg.slide_write_tile, cfg.slide_pyramid_levels)
    row["cells"] = cells
    if extras:
        write_slide_extras(path, output, work, tiles, progress.done, extras, row, timings)
    clear(output)


__all__ = ["analyse", "describe_analysis", "process_slide", "slide_class"]
