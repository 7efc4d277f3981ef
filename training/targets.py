"""Training targets from an instance label map (paper section 2.2.1), computed per instance on its box.

For each instance i (pixels with label value i):

- inner boundary: instance pixels with a 4-neighbour outside the instance (the image edge does not count);
  dilated by a disk of radius `boundary_dilation` (1 px), it is class 2 of the 3-class map and the set of
  "boundary pixels" of the boundary heatmap;
- r_i: the largest Euclidean distance from an instance pixel to the nearest pixel outside the instance;
- cell heatmap: 1 where that distance exceeds r_i * cell_core (r_i/5), 0 elsewhere, then a Gaussian blur
  whose kernel size is r_i * cell_kernel (r_i/5); boundary heatmap: the dilated boundary set to 1, blurred
  with kernel size r_i * boundary_kernel (r_i/10).

A kernel size k becomes an odd integer size n = max(3, 2*floor(k/2) + 1), truncated at radius (n - 1)/2 with
OpenCV's default sigma for that size, 0.3 * ((n - 1)/2 - 1) + 0.8, so "kernel size" means what it means in
cv2.GaussianBlur. Instances are combined by a per-pixel maximum and both heatmaps are clipped to [0, 1].
The 3-class map is 0 background, 1 interior, 2 boundary (boundary wins where dilations overlap neighbours).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from training.config import TargetConfig

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
_CROSS = ndimage.generate_binary_structure(2, 1)


def kernel_size(k: float) -> int:
    """Odd kernel size of at least 3 for a fractional size k (cv2.GaussianBlur needs odd sizes)."""
    return max(3, 2 * int(math.floor(k / 2)) + 1)


def kernel_sigma(size: int) -> float:
    """OpenCV's default Gaussian sigma for an odd kernel size."""
    return 0.3 * ((size - 1) * 0.5 - 1) + 0.8


def blur(mask: np.ndarray, k: float) -> np.ndarray:
    """Gaussian blur of a float mask with kernel size k, truncated at the kernel's radius."""
    size = kernel_size(k)
    sigma = kernel_sigma(size)
    radius = (size - 1) // 2
    return ndimage.gaussian_filter(mask.astype(np.float32), sigma, truncate=radius / sigma, mode="constant")


def disk(radius: int) -> np.ndarray:
    """Boolean disk structuring element of the given radius (radius 1 is the 4-connected cross)."""
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (yy * yy + xx * xx) <= radius * radius


def inner_boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` with a 4-neighbour outside it; outside the array counts as inside (image edge)."""
    eroded = ndimage.binary_erosion(mask, structure=_CROSS, border_value=1)
    return mask & ~eroded


def _window(box: tuple[slice, slice], margin: int, shape: tuple[int, int]) -> tuple[slice, slice]:
    ys, xs = box
    return (
        slice(max(ys.start - margin, 0), min(ys.stop + margin, shape[0])),
        slice(max(xs.start - margin, 0), min(xs.stop + margin, shape[1])),
    )


def make_targets(
    labels: np.ndarray, cfg: TargetConfig = TargetConfig()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Instance labels H×W -> (cls uint8 H×W in {0,1,2}, cell float32 H×W, boundary float32 H×W)."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be H×W, got shape {labels.shape}")
    labels = np.asarray(labels)
    shape = labels.shape
    cls = np.zeros(shape, np.uint8)
    cell = np.zeros(shape, np.float32)
    bound = np.zeros(shape, np.float32)
    cls[labels > 0] = INTERIOR
    boundary_pixels: list[tuple[tuple[slice, slice], np.ndarray]] = []
    selem = disk(cfg.boundary_dilation)
    ridge_selem = disk(cfg.heatmap_boundary_dilation)
    for value, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        # First pass: the radius, to size the window so the blur never reaches its edge.
        mask_box = labels[box] == value
        radius_guess = float(ndimage.distance_transform_edt(np.pad(mask_box, 1)).max())
        blur_radius = (kernel_size(max(cfg.cell_kernel, cfg.boundary_kernel) * radius_guess) - 1) // 2
        margin = blur_radius + max(cfg.boundary_dilation, cfg.heatmap_boundary_dilation) + 2
        win = _window(box, margin, shape)
        mask = labels[win] == value
        distance = ndimage.distance_transform_edt(mask)
        r_i = float(distance.max())
        inner = inner_boundary(mask)
        edge = ndimage.binary_dilation(inner, structure=selem)
        ridge = ndimage.binary_dilation(inner, structure=ridge_selem) if cfg.heatmap_boundary_dilation else inner
        core = blur((distance > cfg.cell_core * r_i).astype(np.float32), cfg.cell_kernel * r_i)
        ring = blur(ridge.astype(np.float32), cfg.boundary_kernel * r_i)
        np.maximum(cell[win], core, out=cell[win])
        np.maximum(bound[win], ring, out=bound[win])
        boundary_pixels.append((win, edge))
    for win, edge in boundary_pixels:
        cls[win][edge] = BOUNDARY
    np.clip(cell, 0.0, 1.0, out=cell)
    np.clip(bound, 0.0, 1.0, out=bound)
    return cls, cell, bound


__all__ = [
    "BACKGROUND", "BOUNDARY", "INTERIOR", "blur", "disk", "inner_boundary", "kernel_sigma", "kernel_size",
    "make_targets",
]
