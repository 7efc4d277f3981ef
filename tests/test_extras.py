"""The optional outputs of predict: overlay, ImageJ ROIs, QuPath GeoJSON and per-cell measurements, each read back
with an independent reader (roifile, json, csv, imageio) and checked against the label map pixel by pixel; a
failing extra leaves the others; a 100-MP map exports in bounded memory."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import roifile
from skimage.draw import disk, ellipse, polygon

from app.config import EXTRA_SUFFIXES, OVERLAY_PALETTE, InferenceConfig
from app.extras import (
    cell_polygons,
    measure,
    overlay,
    overlay_step,
    summary,
    write_csv,
    write_geojson,
    write_png,
    write_roi_zip,
)
from app.pipeline import write_extras
from benchmarks import extras as bench  # the generated many-cell maps

SHAPE = (64, 80)
HOLED = 8  # the one cell with a hole: its outline is the outer boundary, the hole is filled


def _cells() -> np.ndarray:
    """Cells of awkward shapes: on the border, one pixel, one pixel wide, L, diagonal-only, holed, touching."""
    labels = np.zeros(SHAPE, np.int32)
    labels[disk((12, 14), 8, shape=SHAPE)] = 1
    labels[ellipse(40, 16, 5, 12, shape=SHAPE, rotation=0.6)] = 2
    labels[:6, 30:36] = 3  # on the top border
    labels[20, 40] = 4  # a single pixel
    labels[25, 30:42] = 5  # one pixel wide
    labels[30:40, 45:48] = 6  # an L
    labels[37:40, 48:55] = 6
    labels[50, 50] = labels[51, 51] = labels[52, 52] = 7  # diagonal neighbours only
    labels[disk((14, 62), 8, shape=SHAPE)] = HOLED
    labels[13:16, 61:64] = 0
    labels[50:58, 60:68] = 9  # two cells sharing an edge
    labels[50:58, 68:74] = 10
    labels[58:, 74:] = 12  # bottom-right corner; label 11 unused
    return labels


def _boundary(labels: np.ndarray) -> np.ndarray:
    """Labelled pixels with a 4-neighbour of another value (background included), by plain comparisons."""
    edge = np.zeros(labels.shape, bool)
    vertical = labels[1:] != labels[:-1]
    horizontal = labels[:, 1:] != labels[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge & (labels > 0)


def _raster(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre (x + 0.5, y + 0.5) lies inside the polygon: ImageJ's and QuPath's rule."""
    mask = np.zeros(shape, bool)
    rr, cc = polygon(np.asarray(xy)[:, 1] - 0.5, np.asarray(xy)[:, 0] - 0.5, shape)
    mask[rr, cc] = True
    return mask


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _simple(ring: np.ndarray) -> bool:
    """No two non-adjacent edges of the closed ring meet (exact: vertices lie on the half-pixel grid)."""
    edges = list(zip(ring[:-1], ring[1:]))
    n = len(edges)

    def orient(a, b, c) -> float:
        return float(np.sign((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])))

    def on(a, b, c) -> bool:  # c on segment ab, given collinear
        return min(a[0], b[0]) <= c[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= c[1] <= max(a[1], b[1])

    for i in range(n):
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue  # adjacent through the closing vertex
            (p1, p2), (q1, q2) = edges[i], edges[j]
            o1, o2, o3, o4 = orient(p1, p2, q1), orient(p1, p2, q2), orient(q1, q2, p1), orient(q1, q2, p2)
            if o1 * o2 < 0 and o3 * o4 < 0:
                return False
            if (o1 == 0 and on(p1, p2, q1)) or (o2 == 0 and on(p1, p2, q2)) or (o3 == 0 and on(q1, q2, p1)) or (
                o4 == 0 and on(q1, q2, p2)
            ):
                return False
    return True


def _image(labels: np.ndarray) -> np.ndarray:
    """An RGB image whose three channels differ inside every cell."""
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]]
    return np.stack([(yy * 3 + xx) % 256, (labels * 37 + 5) % 256, (xx * 7) % 256], axis=2).astype(np.uint8)


# --- polygons: ImageJ ROIs and GeoJSON -------------------------------------------------------------------------


def test_polygons_cover_exactly_the_cells_pixels() -> None:
    labels = _cells()
    polygons = cell_polygons(labels)
    assert [p.label for p in polygons] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12]
    for cell in polygons:
        ring, mask = cell.ring, labels == cell.label
        assert len(ring) >= 4 and np.array_equal(ring[0], ring[-1]), cell.label
        filled = _raster(ring, SHAPE)
        if cell.label == HOLED:
            assert filled[mask].all() and filled.sum() == mask.sum() + 9  # the 3 x 3 hole is filled
        else:
            np.testing.assert_array_equal(filled, mask, err_msg=f"cell {cell.label}")
        assert _simple(ring), cell.label
    # Straight runs keep only their ends: the 6 x 6 square on the border is an octagon (corners cut by half a pixel).
    assert len(polygons[2].ring) == 9


def test_a_cell_in_two_pieces_keeps_its_larger_piece() -> None:
    labels = np.zeros((20, 20), np.uint32)
    labels[2:8, 2:8] = 5
    labels[15, 15] = 5
    (cell,) = cell_polygons(labels)
    larger = np.zeros(labels.shape, bool)
    larger[2:8, 2:8] = True
    assert cell.label == 5
    np.testing.assert_array_equal(_raster(cell.ring, labels.shape), larger)


def test_roi_zip_reads_back_in_roifile_one_named_roi_per_cell(tmp_path: Path) -> None:
    labels = _cells()
    path = tmp_path / "cells_rois.zip"
    with open(path, "wb") as handle:
        write_roi_zip(handle, cell_polygons(labels))
    rois = roifile.roiread(path)
    assert zipfile.ZipFile(path).namelist() == [f"{n}.roi" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12)]
    assert [roi.name for roi in rois] == ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "12"]
    for roi in rois:
        label = int(roi.name)
        assert roi.roitype in (roifile.ROI_TYPE.FREEHAND, roifile.ROI_TYPE.POLYGON)
        iou = _iou(_raster(roi.coordinates(), SHAPE), labels == label)
        assert iou >= 0.9, (label, iou)
        if label != HOLED:
            assert iou == 1.0, label


def test_geojson_is_a_qupath_feature_collection_of_valid_polygons() -> None:
    labels = _cells()
    buffer = io.BytesIO()
    write_geojson(buffer, cell_polygons(labels))
    collection = json.loads(buffer.getvalue())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert len(features) == len(np.unique(labels)) - 1
    for feature in features:
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        label = feature["properties"]["label"]
        assert feature["properties"] == {"objectType": "detection", "name": str(label), "label": label}
        (ring,) = np.array(feature["geometry"]["coordinates"], dtype=float)
        assert len(ring) >= 4 and np.array_equal(ring[0], ring[-1])
        assert (ring >= 0).all() and (ring[:, 0] <= SHAPE[1]).all() and (ring[:, 1] <= SHAPE[0]).all()
        area = 0.5 * (ring[:-1, 0] @ ring[1:, 1] - ring[1:, 0] @ ring[:-1, 1])
        assert area > 0, label  # exterior ring counter-clockwise (RFC 7946)
        assert _simple(ring), label
        assert _iou(_raster(ring, SHAPE), labels == label) >= 0.9


def test_an_empty_map_gives_empty_files() -> None:
    empty = np.zeros((30, 40), np.int32)
    assert cell_polygons(empty) == []
    zipped, geo, table = io.BytesIO(), io.BytesIO(), io.BytesIO()
    write_roi_zip(zipped, [])
    write_geojson(geo, [])
    write_csv(table, measure(empty, _image(empty)))
    assert zipfile.ZipFile(zipped).namelist() == []
    assert json.loads(geo.getvalue()) == {"type": "FeatureCollection", "features": []}
    assert table.getvalue().decode().count("\n") == 1
    np.testing.assert_array_equal(overlay(empty, _image(empty), 0), _image(empty))


# --- measurements ------------------------------------------------------------------------------------------------


def test_measurements_one_row_per_cell_match_the_pixels() -> None:
    labels = _cells()
    image = _image(labels)
    buffer = io.BytesIO()
    table = measure(labels, image)
    write_csv(buffer, table)
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue().decode())))
    assert list(rows[0]) == [
        "label", "area", "centroid_x", "centroid_y", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1",
        "equivalent_diameter", "eccentricity", "mean_red", "mean_green", "mean_blue",
    ]
    counts = np.bincount(labels.ravel())
    assert [int(r["label"]) for r in rows] == [v for v in range(1, counts.size) if counts[v]]
    for row in rows:
        label = int(row["label"])
        ys, xs = np.nonzero(labels == label)
        assert int(row["area"]) == counts[label]
        assert float(row["centroid_x"]) == pytest.approx(xs.mean() + 0.5, abs=1e-4)
        assert float(row["centroid_y"]) == pytest.approx(ys.mean() + 0.5, abs=1e-4)
        assert [int(row[k]) for k in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")] == [
            xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        ]
        assert float(row["equivalent_diameter"]) == pytest.approx(np.sqrt(4 * counts[label] / np.pi), abs=1e-4)
        for channel, name in enumerate(["mean_red", "mean_green", "mean_blue"]):
            assert float(row[name]) == pytest.approx(image[ys, xs, channel].mean(), abs=1e-4)
    eccentricity = {int(r["label"]): float(r["eccentricity"]) for r in rows}
    assert eccentricity[1] < 0.2 and eccentricity[5] > 0.99 and 0.8 < eccentricity[2] < 0.99


def test_summary_gives_count_and_medians() -> None:
    labels = np.zeros((40, 40), np.int32)
    labels[:2, :2], labels[10:13, 10:13], labels[20:30, 20:30] = 1, 2, 3  # areas 4, 9, 100
    result = summary(measure(labels, _image(labels)))
    assert result == {"cells": 3, "median_area": 9.0, "median_diameter": round(np.sqrt(36 / np.pi), 2)}
    assert summary(measure(labels * 0, _image(labels))) == {"cells": 0, "median_area": "", "median_diameter": ""}


# --- overlay -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_side, step", [(0, 1), (80, 1), (40, 2), (30, 3)])
def test_overlay_draws_outlines_on_label_boundaries_only(max_side: int, step: int) -> None:
    labels = _cells()
    image = _image(labels)
    assert overlay_step(labels.shape, max_side) == step
    picture = overlay(labels, image, max_side)
    small, base = labels[::step, ::step], image[::step, ::step]
    assert picture.shape == (-(-SHAPE[0] // step), -(-SHAPE[1] // step), 3) and picture.dtype == np.uint8
    edges = _boundary(small)
    changed = (picture != base).any(axis=2)
    assert changed.any() and not (changed & ~edges).any()  # every drawn pixel sits on a label boundary
    palette = np.asarray(OVERLAY_PALETTE, np.uint8)
    np.testing.assert_array_equal(picture[edges], palette[small[edges] % len(palette)])
    np.testing.assert_array_equal(picture[~edges], base[~edges])


def test_overlay_of_a_slide_is_drawn_at_most_at_the_configured_side() -> None:
    assert overlay_step((10_000, 10_000), InferenceConfig().overlay_max_side) == 3
    assert overlay_step((4096, 100), 4096) == 1 and overlay_step((4097, 100), 4096) == 2
    assert overlay_step((50_000, 10), 0) == 1


def test_overlay_max_side_cannot_be_negative() -> None:
    with pytest.raises(ValueError, match="overlay_max_side"):
        InferenceConfig(overlay_max_side=-1)


def test_png_round_trip() -> None:
    picture = overlay(_cells(), _image(_cells()), 0)
    buffer = io.BytesIO()
    write_png(buffer, picture)
    np.testing.assert_array_equal(iio.imread(buffer.getvalue(), extension=".png"), picture)


# --- writing through the pipeline ----------------------------------------------------------------------------------


def test_a_failing_extra_is_reported_and_the_others_are_written(tmp_path: Path) -> None:
    labels = _cells()
    (tmp_path / "img_rois.zip").mkdir()  # the ROI zip cannot replace a folder
    row: dict = {}
    timings: dict[str, float] = {}
    failures = write_extras(tmp_path / "in" / "img.v2.png", tmp_path, labels, _image(labels),
                            list(EXTRA_SUFFIXES), InferenceConfig(), row, timings)
    assert len(failures) == 1 and failures[0].startswith("img_rois.zip: IsADirectoryError")
    assert row["message"] == failures[0]
    assert row["extras"] == "img_overlay.png img.geojson img_cells.csv"
    expected = ["img.geojson", "img_cells.csv", "img_overlay.png", "img_rois.zip"]
    assert sorted(p.name for p in tmp_path.iterdir()) == expected
    assert set(timings) == set(EXTRA_SUFFIXES)
    assert row["cells"] == 11 and row["median_area"] > 0


def test_unknown_extra_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown extra output.*pdf"):
        write_extras(tmp_path / "a.png", tmp_path, _cells(), None, ["pdf"], InferenceConfig(), {}, {})


def _all_extras_of_a_100_mp_map(folder: str) -> tuple[int, int, int, dict, list[str]]:
    """In a fresh process: (cells, label map bytes, peak bytes added while writing every extra, row, failures)."""
    labels = bench.cell_map(10_000, spacing=100)
    image = bench.noisy_image(labels.shape)
    row: dict = {}
    with bench.PeakMemory() as memory:
        failures = write_extras(Path(folder) / "slide.tif", Path(folder), labels, image, list(EXTRA_SUFFIXES),
                                InferenceConfig(), row, {})
    return int(labels.max()), labels.nbytes, memory.extra, row, failures


@pytest.mark.slow
def test_a_100_mp_map_exports_every_extra_in_bounded_memory(tmp_path: Path) -> None:
    """10,000 x 10,000 pixels, 10,000 cells: the peak resident memory added while writing all four extras (kernel
    high-water mark) stays below half the int32 label map (200 MB): no extra ever copies the whole slide; the
    overlay's share is bounded by its maximum side (about 140 MB at 4096), the rest by the number of cells.

    Measured in a fresh process: after other tests have freed large buffers, glibc serves big allocations from
    its heap instead of fresh mappings (its mmap threshold grows), which adds tens of MB of resident memory that
    belongs to the allocator's history, not to the extras."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        cells, map_bytes, extra, row, failures = pool.apply(_all_extras_of_a_100_mp_map, (str(tmp_path),))
    assert cells == 10_000
    assert failures == []
    assert 0 < extra < map_bytes / 2, f"peak {extra / 1e6:.0f} MB above the maps"
    assert iio.imread(tmp_path / "slide_overlay.png").shape == (3334, 3334, 3)
    assert len(zipfile.ZipFile(tmp_path / "slide_rois.zip").namelist()) == cells
    assert len(json.loads((tmp_path / "slide.geojson").read_text())["features"]) == cells
    assert (tmp_path / "slide_cells.csv").read_text().count("\n") == cells + 1
    assert row["cells"] == cells
