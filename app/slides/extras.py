"""GeoJSON and measurement extras of a streamed slide, written tile by tile from its finished label file.

Cell g belongs to the tile that stored it (ids offset_i + 1 .. offset_i + k are tile i's, `app.slides.store`),
and all its pixels lie on that tile's stored box, so each tile with cells reads the written labels on that box,
keeps its own ids and hands them to the whole-image extras (`app.extras.cell_polygons`, `app.extras.measure`) as
a small label map, shifted back to slide coordinates. Every cell is reported once, in id order, whole; only one
box is in memory at a time, and GeoJSON, ImageJ ROIs and measurements are written cell by cell as they come.
The outline overlay is drawn on a subsampled copy of the slide (`slide_overlay`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from app import extras as extra_outputs
from app.normalize import apply_ranges, apply_sources
from app.pipeline import write_each_extra
from app.slides.record import load_part
from app.slides.source import Slide
from app.slides.store import offsets
from app.slides.tiles import SlideWork
from app.tiling import Tile
from app.writer import write_atomic

SLIDE_OVERLAY_SIDE = 8192  # the longest side of a slide's overlay when --overlay-max-side is 0


def tile_cells(labels_path: Path, work: SlideWork, tiles: Sequence[Tile], cells: Mapping[int, int]
               ) -> Iterator[tuple[np.ndarray, int, tuple[int, int]]]:
    """(the tile's own cells numbered 1..k on its stored box, its id offset, the box's global top-left) of every
    tile with cells, in tile order."""
    starts = offsets(cells, len(tiles))
    with Slide(labels_path) as labels:
        for index in sorted(i for i, n in cells.items() if n):
            (y0, x0), part = load_part(Path(work.parts), index)
            final = labels.read(y0, y0 + part.shape[0], x0, x0 + part.shape[1])[..., 0].astype(np.int64)
            local = final - int(starts[index])
            local[(local < 1) | (local > cells[index])] = 0
            yield local.astype(np.int32), int(starts[index]), (y0, x0)


def slide_polygons(labels_path: Path, work: SlideWork, tiles: Sequence[Tile], cells: Mapping[int, int]
                   ) -> Iterator[extra_outputs.CellPolygon]:
    """Every cell's outline in slide coordinates, in id order."""
    for local, start, (y0, x0) in tile_cells(labels_path, work, tiles, cells):
        for cell in extra_outputs.cell_polygons(local):
            yield extra_outputs.CellPolygon(cell.label + start, cell.ring + (x0, y0))


def slide_tables(labels_path: Path, work: SlideWork, tiles: Sequence[Tile], cells: Mapping[int, int]
                 ) -> Iterator[dict[str, np.ndarray]]:
    """`app.extras.measure` tables of each tile's cells in slide coordinates, on the normalised pixels the model
    saw."""
    from app.slides.tiles import tile_pixels

    with Slide(work.source) as source:
        for local, start, (y0, x0) in tile_cells(labels_path, work, tiles, cells):
            box = Tile((y0, y0 + local.shape[0], x0, x0 + local.shape[1]),
                       (y0, y0 + local.shape[0], x0, x0 + local.shape[1]))
            table = extra_outputs.measure(local, tile_pixels(source, box, work))
            if not table["label"].size:
                continue
            table["label"] = table["label"] + start
            for column in ("centroid_x", "bbox_x0", "bbox_x1"):
                table[column] = table[column] + x0
            for column in ("centroid_y", "bbox_y0", "bbox_y1"):
                table[column] = table[column] + y0
            yield table


def write_tables(handle: BinaryIO, tables: Iterator[dict[str, np.ndarray]], sizes: dict[str, list[np.ndarray]]
                 ) -> None:
    """The tables as one CSV (one header), collecting areas and diameters in `sizes` for the summary."""
    header = True
    for table in tables:
        extra_outputs.write_csv(handle, table, header=header)
        header = False
        sizes["area"].append(table["area"])
        sizes["equivalent_diameter"].append(table["equivalent_diameter"])
    if header:
        empty = {column: np.zeros(0) for column in extra_outputs.MEASURE_COLUMNS}
        extra_outputs.write_csv(handle, empty)


def slide_overlay(labels_path: Path, work: SlideWork, max_side: int) -> np.ndarray:
    """`app.extras.overlay` of the whole slide on a copy subsampled to at most `max_side` (or
    `SLIDE_OVERLAY_SIDE` when it is 0: a slide is never drawn at full size): both the labels and the normalised
    pixels are read every k-th row and column, so only the small picture is ever in memory."""
    step = extra_outputs.overlay_step((work.height, work.width), max_side or SLIDE_OVERLAY_SIDE)
    with Slide(labels_path) as labels, Slide(work.source) as source:
        small = labels.read(0, work.height, 0, work.width, step=step)[..., 0]
        pixels = apply_ranges(apply_sources(source.read(0, work.height, 0, work.width, step=step), work.sources),
                              work.ranges)
    return extra_outputs.overlay(small, pixels, 0)


def write_slide_extras(source: Path, output: Path, work: SlideWork, tiles: Sequence[Tile], cells: Mapping[int, int],
                       names: Collection[str], row: dict[str, Any], timings: dict[str, float]) -> list[str]:
    """Write the requested extras of a streamed slide beside its label file, each atomically; return the
    failures ("<file>: <reason>"), filling row["extras"], row["message"] and the measurement summary as
    `app.pipeline.write_extras` does."""

    def write_one(name: str, target: Path) -> None:
        if name == "overlay":
            picture = slide_overlay(output, work, work.cfg.overlay_max_side)
            write_atomic(target, partial(extra_outputs.write_png, picture=picture))
        elif name == "measure":
            sizes: dict[str, list[np.ndarray]] = {"area": [], "equivalent_diameter": []}
            tables = slide_tables(output, work, tiles, cells)
            write_atomic(target, partial(write_tables, tables=tables, sizes=sizes))
            summary = extra_outputs.summary({k: np.concatenate(v) if v else np.zeros(0)
                                             for k, v in {"label": sizes["area"], **sizes}.items()})
            row.update({k: v for k, v in summary.items() if k != "cells"})
        else:
            encode = extra_outputs.write_roi_zip if name == "rois" else extra_outputs.write_geojson
            write_atomic(target, partial(encode, polygons=slide_polygons(output, work, tiles, cells)))

    return write_each_extra(source, output.parent, names, write_one, row, timings)


__all__ = ["SLIDE_OVERLAY_SIDE", "slide_overlay", "slide_polygons", "slide_tables", "write_slide_extras"]
