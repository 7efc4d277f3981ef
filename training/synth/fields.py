"""Smooth random fields and per-cell geometry shared by the renderers.

All functions are pure: numpy in, numpy out. Large-scale fields are drawn on a coarse grid and upsampled,
which keeps a multi-thousand-pixel image fast.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

COARSE_SIGMA = 4.0  # fields smoother than this are drawn on a grid coarsened to this sigma


def smooth_noise(rng: np.random.Generator, shape_hw: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise with zero mean and unit standard deviation (float32 H×W)."""
    h, w = shape_hw
    step = max(1.0, sigma / COARSE_SIGMA)
    ch, cw = max(int(np.ceil(h / step)) + 2, 2), max(int(np.ceil(w / step)) + 2, 2)
    coarse = ndi.gaussian_filter(rng.standard_normal((ch, cw)).astype(np.float32), sigma / step, mode="wrap")
    if step > 1.0:
        y = np.arange(h, dtype=np.float32) / step
        x = np.arange(w, dtype=np.float32) / step
        field = ndi.map_coordinates(coarse, np.meshgrid(y, x, indexing="ij"), order=1, mode="nearest")
    else:
        field = coarse[:h, :w]
    std = float(field.std())
    return ((field - field.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def inner_distance(labels: np.ndarray) -> np.ndarray:
    """Distance (px) from each cell pixel to the nearest pixel of another cell or of the background.

    Boundary pixels of a cell get 1, so touching cells each fall off towards their shared border.
    """
    edge = find_boundaries(labels, connectivity=1, mode="inner")
    inside = (labels > 0) & ~edge
    return np.where(labels > 0, ndi.distance_transform_edt(inside) + 1.0, 0.0).astype(np.float32)


def outer_distance(labels: np.ndarray) -> np.ndarray:
    """Distance (px) from each background pixel to the nearest cell; 0 inside cells."""
    return ndi.distance_transform_edt(labels == 0).astype(np.float32)


def per_cell(labels: np.ndarray, values: np.ndarray, background: float = 0.0) -> np.ndarray:
    """Paint one value per cell: `values[i - 1]` on the pixels of cell i (float32 H×W)."""
    lut = np.concatenate([[background], np.asarray(values, dtype=np.float32)]).astype(np.float32)
    return lut[labels]


def normalised_depth(labels: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Inner distance divided by each cell's maximum: 0 at the border, 1 at the cell's centre."""
    n = int(labels.max())
    if n == 0:
        return np.zeros(labels.shape, dtype=np.float32)
    peak = ndi.maximum(dist, labels, index=np.arange(1, n + 1))
    return np.where(labels > 0, dist / np.maximum(per_cell(labels, peak, 1.0), 1.0), 0.0).astype(np.float32)


def edge_profile(dist: np.ndarray, ramp: float) -> np.ndarray:
    """Rise from the cell border: about 1 - exp(-d / ramp), so thin seams separate touching cells."""
    return np.where(dist > 0, 1.0 - np.exp(-dist / max(ramp, 1e-3)), 0.0).astype(np.float32)


def illumination(rng: np.random.Generator, shape_hw: tuple[int, int], vignetting: float, gradient: float) -> np.ndarray:
    """Multiplicative field: radial vignetting around an off-centre point times a linear ramp."""
    h, w = shape_hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h * rng.uniform(0.3, 0.7), w * rng.uniform(0.3, 0.7)
    r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / ((h**2 + w**2) / 4.0)
    field = 1.0 - vignetting * np.clip(r2, 0.0, 1.5)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    ramp = (np.cos(angle) * (xx / max(w - 1, 1) - 0.5) + np.sin(angle) * (yy / max(h - 1, 1) - 0.5))
    return (field * (1.0 + gradient * ramp)).astype(np.float32)
