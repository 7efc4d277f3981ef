"""MT2's post-processing: seeded watershed on the cell-minus-boundary map (paper section 2.3).

map = cell - boundary; foreground = map > T_cell; seeds = connected components of map > T_seed with at least
S_min pixels; a watershed of -map floods from the seeds inside the foreground; foreground that no seed reaches is
dropped. Connectivity: seeds are 8-connected components (diagonal neighbours join, as skimage's default label
for 2-D), the watershed floods through 4-connected neighbours (skimage's default), so two cells touching only at a
corner are not merged by the flooding.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from app.config import InferenceConfig

SEED_STRUCTURE = np.ones((3, 3), bool)  # 8-connectivity for seed components
FLOOD_CONNECTIVITY = 1  # 4-connectivity for the watershed


def seed_labels(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Connected components of a boolean mask with at least `min_area` pixels, labelled 1..K (int32)."""
    seeds, count = ndimage.label(mask, structure=SEED_STRUCTURE, output=np.int32)
    if count == 0:
        return seeds
    keep = np.bincount(seeds.ravel(), minlength=count + 1) >= min_area
    keep[0] = False
    relabel = np.zeros(count + 1, np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return relabel[seeds]


def instance_map(cell: np.ndarray, boundary: np.ndarray, cfg: InferenceConfig) -> np.ndarray:
    """int32 instance labels 0 (background), 1..N from float cell and boundary probability maps of equal shape."""
    if cell.shape != boundary.shape or cell.ndim != 2:
        raise ValueError(f"cell and boundary must be equal 2-D maps, got {cell.shape} and {boundary.shape}")
    score = np.subtract(cell, boundary, dtype=np.float32)
    foreground = score > cfg.cell_threshold
    # Seeds are kept inside the foreground even if a config puts the seed threshold below the cell threshold.
    seeds = seed_labels((score > cfg.seed_threshold) & foreground, cfg.min_seed_area)
    if not seeds.any():
        return np.zeros(cell.shape, np.int32)
    np.negative(score, out=score)
    labels = watershed(score, markers=seeds, mask=foreground, connectivity=FLOOD_CONNECTIVITY)
    # Every seed keeps its own pixels, so the labels are already 1..N without gaps.
    return labels.astype(np.int32, copy=False)
