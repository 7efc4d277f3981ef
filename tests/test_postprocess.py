"""MT2 watershed post-processing on drawn discs with exact expected instance counts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import watershed

from app.config import InferenceConfig
from app.infer import Plan
from app.postprocess import drop_small_cells, instance_map, seed_labels, seed_maxima, split_at
from tests.onnx_models import disc_image, domed_pair

CFG = InferenceConfig()  # T_cell 0.3, T_seed 0.8, S_min 64


def disc_maps(shape, centres, radius, value=1.0):
    """cell map = `value` inside the discs, boundary map empty."""
    cell = (disc_image(shape, centres, radius) > 0).astype(np.float32) * np.float32(value)
    return cell, np.zeros(shape, np.float32)


def assert_sequential(labels: np.ndarray, count: int) -> None:
    assert labels.dtype == np.int32
    assert np.unique(labels).tolist() == list(range(count + 1))


def test_separate_discs_one_instance_each():
    centres = [(20, 20), (20, 80), (70, 50), (110, 20), (110, 100)]
    cell, boundary = disc_maps((130, 130), centres, 12)
    labels = instance_map(cell, boundary, CFG)
    assert_sequential(labels, 5)
    for cy, cx in centres:  # each disc is exactly one label, and all of it
        disc = disc_image((130, 130), [(cy, cx)], 12) > 0
        assert np.unique(labels[disc]).size == 1 and labels[cy, cx] > 0
        assert (labels == labels[cy, cx]).sum() == disc.sum()


def test_touching_discs_split_by_a_boundary_ridge():
    cell, boundary = disc_maps((80, 120), [(40, 40), (40, 78)], 20)  # the discs overlap around x = 59
    assert ndimage.label(cell > 0)[1] == 1
    assert instance_map(cell, boundary, CFG).max() == 1  # no ridge: one merged cell
    boundary[:, 57:62] = 0.6  # map 0.4 on the ridge: still foreground, but no seed crosses it
    labels = instance_map(cell, boundary, CFG)
    assert_sequential(labels, 2)
    assert labels[40, 30] != labels[40, 90]
    assert ((labels > 0) == (cell > 0)).all()  # the ridge is flooded, not dropped


def test_small_seed_dropped():
    cell, boundary = disc_maps((100, 100), [(30, 30), (70, 70)], 12)
    small = disc_image((100, 100), [(20, 80)], 4) > 0  # 49 px < 64
    assert small.sum() < CFG.min_seed_area
    cell[small] = 1.0
    labels = instance_map(cell, boundary, CFG)
    assert_sequential(labels, 2)
    assert (labels[small] == 0).all()


def test_foreground_without_seed_dropped():
    cell, boundary = disc_maps((100, 100), [(30, 30)], 12)
    faint = disc_image((100, 100), [(70, 70)], 15) > 0
    cell[faint] = 0.6  # foreground (> 0.3) but never a seed (< 0.8)
    labels = instance_map(cell, boundary, CFG)
    assert_sequential(labels, 1)
    assert (labels[faint] == 0).all()


def test_labels_sequential_after_drops():
    centres = [(15, 15 + 30 * i) for i in range(6)]
    cell, boundary = disc_maps((60, 200), centres, 10)
    for cy, cx in centres[::2]:  # every other disc becomes faint: its label must not leave a gap
        cell[disc_image((60, 200), [(cy, cx)], 10) > 0] = 0.5
    assert_sequential(instance_map(cell, boundary, CFG), 3)


def test_diagonal_seed_pieces_form_one_seed():
    """Two 5×7 squares meeting at a corner: one 8-connected seed of 70 px (each half alone is below 64)."""
    cell = np.zeros((30, 30), np.float32)
    cell[5:10, 5:12] = 1.0
    cell[10:15, 12:19] = 1.0
    labels = instance_map(cell, np.zeros_like(cell), CFG)
    assert_sequential(labels, 1)
    assert (labels > 0).sum() == 70


def test_empty_and_mismatched_maps():
    empty = np.zeros((40, 50), np.float32)
    labels = instance_map(empty, empty, CFG)
    assert labels.dtype == np.int32 and labels.shape == (40, 50) and not labels.any()
    with pytest.raises(ValueError, match="equal 2-D maps"):
        instance_map(empty, empty[:, :49], CFG)


def test_seed_labels_vectorised_area_filter():
    mask = np.zeros((20, 40), bool)
    mask[2:12, 2:12] = True  # 100 px
    mask[2:6, 20:26] = True  # 24 px
    mask[14:19, 30:39] = True  # 45 px
    seeds = seed_labels(mask, 40)
    assert seeds.max() == 2 and (seeds[2:12, 2:12] == 1).all() and (seeds[14:19, 30:39] == 2).all()


def test_same_result_as_one_global_watershed():
    """The per-component shortcut equals MT2's single watershed on a crowded map with boundary ridges."""
    rng = np.random.default_rng(5)
    points = np.zeros((300, 300), bool)
    points[rng.integers(0, 300, 120), rng.integers(0, 300, 120)] = True
    distance, (iy, ix) = ndimage.distance_transform_edt(~points, return_indices=True)
    cell = np.clip(1.2 - distance / 12 + rng.random(points.shape) * 1e-3, 0, 1).astype(np.float32)
    owner = ndimage.label(points)[0][iy, ix]
    edges = (ndimage.morphological_gradient(owner, size=3) > 0).astype(np.float32)
    boundary = np.clip(ndimage.gaussian_filter(edges, 1) * 1.5, 0, 1).astype(np.float32)
    boundary[:150] *= 0.3  # top half: weak ridges, so cells there share foreground and need flooding
    score = cell - boundary
    foreground = score > CFG.cell_threshold
    seeds = seed_labels((score > CFG.seed_threshold) & foreground, CFG.min_seed_area)
    expected = watershed(-score, markers=seeds, mask=foreground, connectivity=1)
    labels = instance_map(cell, boundary, CFG)
    assert labels.max() > 20
    np.testing.assert_array_equal(labels, expected)


SPLIT = InferenceConfig(cell_threshold=0.1, seed_threshold=0.5, min_seed_area=8, seed_split_height=0.15)


def test_seed_with_two_maxima_split_into_two_cells():
    cell = domed_pair()
    boundary = np.zeros_like(cell)
    off = SPLIT.with_overrides(seed_split_height=0.0)
    assert instance_map(cell, boundary, off).max() == 1  # MT2's seeds: one merged cell
    labels = instance_map(cell, boundary, SPLIT)
    assert_sequential(labels, 2)
    assert labels[40, 30] != labels[40, 90]
    assert ((labels > 0) == (cell - boundary > SPLIT.cell_threshold)).all()  # the whole foreground kept
    # The cut follows the saddle between the domes (x = 59), give or take the pixel the tie falls on.
    assert set(np.unique(labels[:, :58])) - {0} == {labels[40, 30]}
    assert set(np.unique(labels[:, 61:])) - {0} == {labels[40, 90]}


def test_one_dome_and_shallow_bumps_stay_one_cell():
    cell = domed_pair(centres=((40, 60),))
    rng = np.random.default_rng(0)
    bumpy = cell + np.where(cell > 0, rng.random(cell.shape) * 0.1, 0).astype(np.float32)  # bumps below h
    for c in (cell, bumpy):
        assert_sequential(instance_map(c, np.zeros_like(c), SPLIT), 1)


def test_dip_below_the_split_height_is_not_split():
    cell = domed_pair(drop=0.1)  # the saddle dips about 0.09 below the maxima
    assert instance_map(cell, np.zeros_like(cell), SPLIT).max() == 1
    assert instance_map(cell, np.zeros_like(cell), SPLIT.with_overrides(seed_split_height=0.05)).max() == 2


def test_split_smoothing_is_counted_in_the_model_view():
    """sigma is in model pixels: maps that the model saw at a tenth of their size are smoothed 10x wider here,
    which flattens a saddle between close maxima."""
    cell = domed_pair(shape=(40, 60), centres=((20, 24), (20, 36)), radius=8, drop=0.6)
    boundary = np.zeros_like(cell)
    assert instance_map(cell, boundary, SPLIT, view_scale=1.0).max() == 2
    assert instance_map(cell, boundary, SPLIT, view_scale=0.1).max() == 1
    # The same maps enlarged 3x, seen by the model at a third of that size, split the same way.
    big = np.kron(cell, np.ones((3, 3), np.float32))
    big_cfg = SPLIT.with_overrides(min_seed_area=SPLIT.min_seed_area * 9)
    assert instance_map(big, np.zeros_like(big), big_cfg, view_scale=1 / 3).max() == 2


def test_split_at_numbers_kept_seeds_first():
    seeds = np.zeros((10, 30), np.int32)
    seeds[2:8, 1:9], seeds[2:8, 11:19], seeds[2:8, 21:29] = 1, 2, 3
    maxima = np.zeros(seeds.shape, bool)
    maxima[4, [3, 6]] = True  # seed 1: two maxima, split
    maxima[4, 14] = True  # seed 2: one maximum, kept whole
    out = split_at(seeds, maxima)
    assert (out[seeds == 2] == 1).all() and (out[seeds == 3] == 2).all()  # kept seeds, in order, whole
    assert out[4, 3] == 3 and out[4, 6] == 4  # the pieces of seed 1 come after them
    assert ((out > 0) & (seeds == 1)).sum() == 2  # the rest of seed 1 is left to the flooding
    np.testing.assert_array_equal(split_at(seeds, np.zeros_like(maxima)), seeds)


def test_maxima_of_equal_domes_joined_by_a_high_ridge_are_one_piece():
    """Two equally high maxima whose saddle is shallower than h are one plateau: no split (skimage's
    h_maxima would mark both tops)."""
    cell = domed_pair(drop=0.1)
    seeds = seed_labels(cell > 0.5, 8)
    assert seeds.max() == 1
    assert ndimage.label(seed_maxima(cell, seeds, 0.15), structure=np.ones((3, 3)))[1] == 1
    assert ndimage.label(seed_maxima(cell, seeds, 0.05), structure=np.ones((3, 3)))[1] == 2


def test_seeds_with_one_maximum_are_left_out_of_the_maxima():
    cell = domed_pair(centres=((40, 30), (40, 90)), radius=15)  # two separate domes, one seed each
    seeds = seed_labels(cell > 0.5, 8)
    assert seeds.max() == 2 and not seed_maxima(cell, seeds, 0.01).any()


def test_plan_view_scale_is_the_geometric_mean():
    assert Plan((0.5, 2.0), 256).view_scale == pytest.approx(1.0)
    assert Plan((1.5,), 256).view_scale == pytest.approx(1.5)
    assert Plan((), 256).view_scale == 1.0


def test_small_cells_dropped_relative_to_the_median_cell():
    labels = np.zeros((20, 60), np.int32)
    labels[2:12, 2:12], labels[2:12, 20:30], labels[2:12, 40:50] = 1, 2, 4  # 100 px each
    labels[15:17, 15:17] = 3  # 4 px
    out = drop_small_cells(labels, 0.2)
    assert_sequential(out, 3)
    assert (out[15:17, 15:17] == 0).all() and out[5, 45] == 3  # cell 4 renumbered after the drop
    assert drop_small_cells(labels, 0.0) is labels and drop_small_cells(labels, 0.03) is labels
    with pytest.raises(ValueError, match="min_area_ratio"):
        InferenceConfig(min_area_ratio=1.0)


def test_small_cell_filter_follows_the_cells_size():
    """A disc of a sixth of its neighbours' area goes at ratio 0.2, at any magnification; S_min alone, in pixels,
    would keep it in the enlarged image."""
    cfg = InferenceConfig(cell_threshold=0.1, seed_threshold=0.5, min_seed_area=8, min_area_ratio=0.2)
    for zoom in (1, 3):
        centres = [(20 * zoom, 20 * zoom), (20 * zoom, 60 * zoom), (60 * zoom, 20 * zoom)]
        cell, boundary = disc_maps((80 * zoom, 80 * zoom), centres, 12 * zoom)
        cell[disc_image(cell.shape, [(60 * zoom, 60 * zoom)], 5 * zoom) > 0] = 1.0
        assert instance_map(cell, boundary, cfg.with_overrides(min_area_ratio=0.0)).max() == 4
        labels = instance_map(cell, boundary, cfg)
        assert_sequential(labels, 3)
        assert labels[60 * zoom, 60 * zoom] == 0
