"""Target maps on drawn discs: classes, heatmap ranges, boundary width, per-instance scaling."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk as draw_disk

from training.config import TargetConfig
from training.targets import BOUNDARY, INTERIOR, blur, inner_boundary, kernel_sigma, kernel_size, make_targets


def disc_labels(shape=(96, 96), discs=(((48, 48), 20, 1),)) -> np.ndarray:
    labels = np.zeros(shape, np.int32)
    for centre, radius, value in discs:
        rr, cc = draw_disk(centre, radius, shape=shape)
        labels[rr, cc] = value
    return labels


def test_classes_of_a_disc():
    labels = disc_labels()
    cls, cell, boundary = make_targets(labels)
    assert cls.dtype == np.uint8 and set(np.unique(cls)) == {0, 1, 2}
    assert cls[48, 48] == INTERIOR and cls[0, 0] == 0
    # Every instance pixel is interior or boundary; boundary = inner boundary dilated by one pixel.
    assert np.all(cls[labels > 0] > 0)
    expected = np.zeros_like(labels, bool)
    ring = inner_boundary(labels > 0)
    expected |= ring
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        expected |= np.roll(ring, (dy, dx), axis=(0, 1))
    assert np.array_equal(cls == BOUNDARY, expected)


def test_boundary_band_is_three_pixels_wide_across_the_edge():
    cls, _, _ = make_targets(disc_labels())
    row = cls[48]
    left = np.flatnonzero(row == BOUNDARY)
    left = left[left < 48]
    # One pixel outside the disc, the inner boundary pixel, one pixel inside.
    assert len(left) == 3 and np.all(np.diff(left) == 1)
    assert row[left[0] - 1] == 0 and row[left[-1] + 1] == INTERIOR


def test_heatmap_ranges_and_shapes():
    labels = disc_labels()
    cls, cell, boundary = make_targets(labels)
    for heat in (cell, boundary):
        assert heat.dtype == np.float32 and heat.shape == labels.shape
        assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert cell[48, 48] == pytest.approx(1.0)
    assert cell[0, 0] == 0.0 and boundary[0, 0] == 0.0 and boundary[48, 48] == 0.0
    # The cell heatmap's core lies inside the disc and fades towards its edge; the boundary peaks on it.
    assert cell[labels == 0].max() < 0.5
    edge = cls == BOUNDARY
    assert boundary[edge].mean() > boundary[~edge & (labels > 0)].mean()
    # The boundary heatmap is the blurred 1-px inner boundary: it peaks on those pixels, inside the class-2 band.
    inner = inner_boundary(labels > 0)
    assert boundary[inner].min() > 0.3
    assert boundary[inner].max() == pytest.approx(float(boundary.max()))
    assert boundary[~edge].max() < boundary[inner].min()


def test_core_threshold_is_a_fifth_of_the_radius():
    labels = disc_labels()
    _, cell, _ = make_targets(labels, TargetConfig(cell_kernel=0.0))  # smallest blur (3-pixel kernel)
    row = cell[48, 28:69]
    # r is about 20, so the core ends about 4 pixels inside the edge; with the smallest blur the map is
    # 1 well inside and 0 at the edge.
    assert row[:2].max() < 0.05 and row[-2:].max() < 0.05
    assert np.all(row[10:-10] == pytest.approx(1.0))


def test_blur_scales_with_each_instance_radius():
    labels = disc_labels((160, 160), (((40, 40), 8, 1), ((110, 110), 40, 2)))
    _, cell, _ = make_targets(labels)
    small = cell[40, 40 - 8 : 40 + 9]
    large = cell[110, 110 - 40 : 110 + 41]
    # A wider cell gets a wider kernel: more pixels in the soft transition (0 < v < 1) across its centre.
    soft = [int(np.sum((row > 0.01) & (row < 0.99))) for row in (small, large)]
    assert 0 < soft[0] < soft[1]


def test_touching_cells_are_separated_by_boundary_class():
    labels = np.zeros((40, 60), np.int32)
    labels[10:30, 10:30] = 5
    labels[10:30, 30:50] = 9  # non-sequential values, sharing an edge
    cls, _, _ = make_targets(labels)
    assert np.all(cls[12:28, 29:31] == BOUNDARY)
    assert cls[20, 20] == INTERIOR and cls[20, 40] == INTERIOR


def test_cells_on_the_image_edge_have_no_boundary_along_it():
    labels = np.zeros((40, 40), np.int32)
    labels[0:20, 10:30] = 1
    cls, _, _ = make_targets(labels)
    assert np.all(cls[0, 13:27] == INTERIOR)


def test_empty_labels_give_empty_targets():
    cls, cell, boundary = make_targets(np.zeros((16, 16), np.int32))
    assert not cls.any() and not cell.any() and not boundary.any()


def test_kernel_size_and_sigma_follow_opencv():
    assert kernel_size(0.0) == 3 and kernel_size(4.0) == 5 and kernel_size(5.5) == 5 and kernel_size(6.0) == 7
    assert kernel_sigma(3) == pytest.approx(0.8) and kernel_sigma(7) == pytest.approx(1.4)
    impulse = np.zeros((9, 9), np.float32)
    impulse[4, 4] = 1
    out = blur(impulse, 3)
    assert out.sum() == pytest.approx(1.0) and np.count_nonzero(out) == 9  # 3 × 3 support


def test_rejects_a_non_2d_label_map():
    with pytest.raises(ValueError, match="H×W"):
        make_targets(np.zeros((4, 4, 2), np.int32))


def test_heatmap_boundary_dilation_widens_the_ridge():
    labels = disc_labels()
    _, _, thin = make_targets(labels)
    _, _, wide = make_targets(labels, TargetConfig(heatmap_boundary_dilation=1))
    assert wide.max() == pytest.approx(1.0, abs=0.05)
    assert thin.max() < 0.9
    assert (wide > 0.3).sum() > (thin > 0.3).sum()
