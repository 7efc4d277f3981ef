"""Optional outputs beside a label map: an outline overlay, ImageJ ROIs, QuPath GeoJSON and per-cell measurements.

Pure functions from the label map (and the normalised image) to arrays, polygons and tables, plus serialisers
that write those to an open binary file (the pipeline hands them `app.writer.write_atomic`'s handle).

Coordinates follow ImageJ and QuPath: x to the right, y down, in pixels, the origin at the top-left corner of the
image, so pixel (row r, column c) covers [c, c + 1) × [r, r + 1) and its centre is (c + 0.5, r + 0.5). A cell's
polygon runs through the edge midpoints between its pixels and the others (marching squares at level 0.5 on the
cell's padded bounding-box crop), so every pixel centre of the cell lies inside it and every other pixel centre
outside, which is how ImageJ and QuPath turn a polygon back into pixels.

scikit-image, Pillow and roifile are imported by the functions that use them, so a run without extras (the
challenge's, where start-up is paid per image) does not load them.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from dataclasses import dataclass
from typing import BinaryIO, Iterable

import numpy as np
from scipy import ndimage

from app.config import OVERLAY_PALETTE
from app.writer import rows_csv

# The extras that read the normalised image besides the label map (the pipeline keeps it only for them).
NEEDS_IMAGE = frozenset({"overlay", "measure"})
# CSV columns: ours, from scikit-image's regionprops_table names. Rows and columns become (y, x); the centroid
# moves by half a pixel to the corner origin; the bounding box is [x0, x1) × [y0, y1) in that convention already.
MEASURE_COLUMNS: dict[str, str] = {
    "label": "label",
    "area": "area",
    "centroid_x": "centroid-1",
    "centroid_y": "centroid-0",
    "bbox_x0": "bbox-1",
    "bbox_y0": "bbox-0",
    "bbox_x1": "bbox-3",
    "bbox_y1": "bbox-2",
    "equivalent_diameter": "equivalent_diameter_area",
    "eccentricity": "eccentricity",
    "mean_red": "intensity_mean-0",
    "mean_green": "intensity_mean-1",
    "mean_blue": "intensity_mean-2",
}
_REGIONPROPS = ("label", "area", "centroid", "bbox", "equivalent_diameter_area", "eccentricity", "intensity_mean")
_INTEGER_COLUMNS = frozenset({"label", "area", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"})


@dataclass(frozen=True)
class CellPolygon:
    """One cell's outline: its label and a closed counter-clockwise ring of (x, y) vertices (first == last)."""

    label: int
    ring: np.ndarray  # K×2 float64, K ≥ 4


# --- overlay -----------------------------------------------------------------------------------------------------


def overlay_step(shape: tuple[int, int], max_side: int) -> int:
    """Integer subsampling step that brings the longer side to at most `max_side` (1: full size; 0: never shrink)."""
    longest = max(shape)
    return 1 if max_side <= 0 or longest <= max_side else math.ceil(longest / max_side)


def overlay(labels: np.ndarray, image_u8: np.ndarray, max_side: int) -> np.ndarray:
    """uint8 h×w×3 picture: each cell's inner outline in its palette colour over the normalised image.

    Above `max_side` both are subsampled by nearest neighbour (every k-th pixel) first, so a 10,000² slide costs
    a few million pixels, not a hundred million; outlines are then one pixel of the smaller picture.
    """
    if labels.shape != image_u8.shape[:2]:
        raise ValueError(f"labels {labels.shape} and image {image_u8.shape} differ in size")
    from skimage.segmentation import find_boundaries

    step = overlay_step(labels.shape, max_side)
    small = labels[::step, ::step]
    picture = np.array(image_u8[::step, ::step], dtype=np.uint8, copy=True)
    edges = find_boundaries(small, connectivity=1, mode="inner", background=0)
    palette = np.asarray(OVERLAY_PALETTE, np.uint8)
    picture[edges] = palette[small[edges] % len(palette)]
    return picture


def write_png(handle: BinaryIO, picture: np.ndarray) -> None:
    """Encode an RGB uint8 picture as PNG (Pillow; fastest zlib level, outlines compress well anyway)."""
    from PIL import Image

    Image.fromarray(picture).save(handle, format="PNG", compress_level=1)


# --- polygons ----------------------------------------------------------------------------------------------------


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed ring of (a, b) points: positive when it turns counter-clockwise in (a, b)."""
    a, b = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(a[:-1], b[1:]) - np.dot(a[1:], b[:-1]))


def _turning_points(ring: np.ndarray) -> np.ndarray:
    """A closed ring without its collinear vertices (exact: marching-squares points lie on a half-pixel grid)."""
    after = np.diff(ring, axis=0)  # edge i runs from vertex i to vertex i + 1
    before = np.concatenate([after[-1:], after[:-1]])
    kept = ring[:-1][before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0] != 0]
    return np.concatenate([kept, kept[:1]])


def cell_polygons(labels: np.ndarray) -> list[CellPolygon]:
    """The outer outline of every cell, in label order, in ImageJ / QuPath pixel coordinates (module docstring).

    Each cell is traced on its own bounding box padded by one pixel (`scipy.ndimage.find_objects`), so the cost
    follows the cells' area, not cells × image. Diagonal neighbours count as connected; a cell in several pieces
    keeps its largest, and holes are filled. Vertices on a straight run are dropped, which changes no pixel: a
    30-px cell keeps about half of its vertices. (Douglas-Peucker simplification, `approximate_polygon`, would
    also bend the outline and costs about 1 ms per cell in pure Python: 100 s for 100,000 cells.)
    """
    from skimage.measure import find_contours

    if labels.ndim != 2 or labels.dtype.kind not in "ui":
        raise ValueError(f"labels must be a 2-D integer map, got {labels.dtype} {labels.shape}")
    polygons: list[CellPolygon] = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        crop = labels[box]
        mask = np.zeros((crop.shape[0] + 2, crop.shape[1] + 2), bool)
        mask[1:-1, 1:-1] = crop == index
        contours = find_contours(mask, 0.5, fully_connected="high")
        outer = contours[0] if len(contours) == 1 else max(contours, key=lambda c: abs(_signed_area(c)))
        ring = _turning_points(outer)
        # (row, col) of the padded crop → (x, y) of the image, pixel corners at integers.
        xy = ring[:, ::-1] + (box[1].start - 0.5, box[0].start - 0.5)
        if _signed_area(xy) < 0:  # RFC 7946: exterior rings counter-clockwise
            xy = xy[::-1]
        polygons.append(CellPolygon(index, np.ascontiguousarray(xy)))
    return polygons


def write_roi_zip(handle: BinaryIO, polygons: Iterable[CellPolygon]) -> None:
    """ImageJ ROI set: one sub-pixel polygon ROI per cell, named by its label, as `<label>.roi` in a zip.

    Fiji opens it with File > Open or the ROI Manager's More > Open. The ROIs are encoded by `roifile`.
    """
    from roifile import ImagejRoi

    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for cell in polygons:
            name = str(cell.label)
            archive.writestr(f"{name}.roi", ImagejRoi.frompoints(cell.ring[:-1], name=name).tobytes())


def geojson_feature(cell: CellPolygon) -> dict:
    """A QuPath detection: Polygon geometry, `objectType` "detection", its label as name and as a number."""
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [cell.ring.tolist()]},
        "properties": {"objectType": "detection", "name": str(cell.label), "label": cell.label},
    }


def write_geojson(handle: BinaryIO, polygons: Iterable[CellPolygon]) -> None:
    """A GeoJSON FeatureCollection, one feature per line, streamed so that 100,000 cells never sit in one string."""
    text = io.TextIOWrapper(handle, encoding="utf-8", newline="\n", write_through=True)
    try:
        text.write('{"type": "FeatureCollection", "features": [')
        for i, cell in enumerate(polygons):
            text.write(("\n" if i == 0 else ",\n") + json.dumps(geojson_feature(cell), separators=(",", ":")))
        text.write("\n]}\n")
        text.flush()
    finally:
        text.detach()  # the caller owns (and closes) the binary handle


# --- measurements ------------------------------------------------------------------------------------------------


def measure(labels: np.ndarray, image_u8: np.ndarray) -> dict[str, np.ndarray]:
    """Per-cell table (`MEASURE_COLUMNS`, one row per cell in label order) from scikit-image's regionprops_table.

    Mean intensities are those of the normalised RGB image (0..255) the model saw; coordinates as in the module
    docstring.
    """
    if labels.shape != image_u8.shape[:2] or image_u8.ndim != 3 or image_u8.shape[2] != 3:
        raise ValueError(f"labels {labels.shape} need an H×W×3 image of the same size, got {image_u8.shape}")
    from skimage.measure import regionprops_table

    # cache=False: otherwise the cached crops of every region (mask, intensities) all stay alive until the end,
    # memory that grows with the cells' total box area (docs/APP.md), for about 10% less time.
    props = regionprops_table(labels, intensity_image=image_u8, properties=_REGIONPROPS, cache=False)
    table = {ours: np.asarray(props[theirs]) for ours, theirs in MEASURE_COLUMNS.items()}
    table["centroid_x"] = table["centroid_x"] + 0.5
    table["centroid_y"] = table["centroid_y"] + 0.5
    return table


def summary(table: dict[str, np.ndarray]) -> dict[str, float | int | str]:
    """Cell count, median area (px) and median equivalent diameter (px) of a `measure` table ('' when no cell)."""
    count = len(table["label"])
    if not count:
        return {"cells": 0, "median_area": "", "median_diameter": ""}
    return {
        "cells": count,
        "median_area": float(np.median(table["area"])),
        "median_diameter": round(float(np.median(table["equivalent_diameter"])), 2),
    }


def write_csv(handle: BinaryIO, table: dict[str, np.ndarray], header: bool = True) -> None:
    """The table as CSV: integers as integers, other values with 4 decimals (`header`: the column names first;
    a streamed slide writes its tiles' tables one after the other)."""
    columns = list(table)
    formatted = [
        table[c].astype(np.int64).astype(str) if c in _INTEGER_COLUMNS else np.char.mod("%.4f", table[c])
        for c in columns
    ]
    rows = zip(*formatted)
    handle.write(rows_csv([columns, *rows] if header else rows).encode("utf-8"))

