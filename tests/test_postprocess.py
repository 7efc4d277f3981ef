"""MT2 watershed post-processing on drawn discs with exact expected instance counts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import watershed

from app.config import InferenceConfig
from app.postprocess import instance_map, seed_labels
from tests.onnx_models import disc_image

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
