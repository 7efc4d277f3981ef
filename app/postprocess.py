"""MT2's post-processing: seeded watershed on the cell-minus-boundary map (paper section 2.3).

map = cell - boundary; foreground = map > T_cell; seeds = connected components of map > T_seed with at least
S_min pixels; a watershed of -map floods from the seeds inside the foreground; foreground that no seed reaches is
dropped. Connectivity: seeds are 8-connected components (diagonal neighbours join, as skimage's default label
for 2-D), the watershed floods through 4-connected neighbours (skimage's default), so two cells touching only at a
corner are not merged by the flooding.

Seed splitting (`cfg.seed_split_height` > 0, off in MT2): touching cells whose boundary the network drew too
faintly share one seed, the most common error on real images (a merged pair costs two misses and one false
positive at worst). Such a seed still holds one maximum of the map per cell, so the map is smoothed (Gaussian,
`cfg.seed_split_sigma` px as the model sees the image) and a seed holding several maxima of dynamic h (each at
least h above the saddle inside the seed that joins it to a higher or equal one) is replaced by those maxima,
which the flooding then grows back to the whole seed and beyond. Seeds with one such maximum stay as they are.

Small-cell filter (`cfg.min_area_ratio` > 0, off in MT2): cells smaller than this share of the image's median
cell area are dropped at the end. S_min is counted in pixels of the image and cannot know the cells' size; this
ratio follows the image's own cells.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import local_maxima, reconstruction
from skimage.segmentation import watershed

from app.config import InferenceConfig

SEED_STRUCTURE = np.ones((3, 3), bool)  # 8-connectivity for seed components
FLOOD_CONNECTIVITY = 1  # 4-connectivity for the watershed
FLOOD_STRUCTURE = ndimage.generate_binary_structure(2, FLOOD_CONNECTIVITY)


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


def _pieces(seeds: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected pieces of `mask` inside the seeds, labelled 1..P, and the seed of each piece (index 0 unused).
    A piece lies inside one seed: distinct seeds are never 8-neighbours."""
    pieces, count = ndimage.label(mask & (seeds > 0), structure=SEED_STRUCTURE, output=np.int32)
    seed_of = np.zeros(count + 1, np.int32)
    seed_of[pieces.ravel()] = seeds.ravel()
    seed_of[0] = 0
    return pieces, seed_of


def seed_maxima(smooth: np.ndarray, seeds: np.ndarray, height: float) -> np.ndarray:
    """Boolean mask of the maxima of `smooth` with a dynamic of at least `height` inside their seed, for the
    seeds that hold several regional maxima (the others cannot split and are left out).

    Per seed, on its box with everything outside the seed set below the map: reconstructing the map lowered by
    `height` under the map fills every valley shallower than `height`, so two maxima joined inside the seed by a
    saddle less than `height` below the lower one become one plateau (one piece of the mask). skimage's
    `h_maxima` would keep the tops of equally high maxima apart whatever their saddle (two saturated cell cores
    joined by a barely lower ridge), and on the whole image it costs ten times more: most seeds have a single
    maximum, found by the cheap regional-maximum pass.
    """
    n_seeds = int(seeds.max(initial=0))
    _, seed_of = _pieces(seeds, local_maxima(smooth, connectivity=2).astype(bool))
    several = np.flatnonzero(np.bincount(seed_of[1:], minlength=n_seeds + 1) >= 2)
    out = np.zeros(seeds.shape, bool)
    if several.size == 0:
        return out
    boxes = ndimage.find_objects(seeds)
    floor = np.float32(smooth.min() - height)
    for seed in several:
        box = boxes[seed - 1]
        inside = seeds[box] == seed
        part = np.where(inside, smooth[box], floor)
        filled = reconstruction(part - np.float32(height), part, method="dilation")
        out[box] |= local_maxima(filled, connectivity=2).astype(bool) & inside
    return out


def split_at(seeds: np.ndarray, maxima: np.ndarray) -> np.ndarray:
    """Seed labels 1..K' after replacing every seed that holds two or more 8-connected pieces of `maxima` with
    those pieces; other seeds are kept whole, in their order, and the pieces numbered after them."""
    n_seeds = int(seeds.max(initial=0))
    pieces, seed_of = _pieces(seeds, maxima)
    split = np.bincount(seed_of[1:], minlength=n_seeds + 1) >= 2
    split[0] = False
    if not split.any():
        return seeds
    kept = np.flatnonzero(~split[1:]) + 1
    new_id = np.zeros(n_seeds + 1, np.int32)
    new_id[kept] = np.arange(1, kept.size + 1, dtype=np.int32)
    split_pieces = np.flatnonzero(split[seed_of])
    piece_id = np.zeros(seed_of.size, np.int32)
    piece_id[split_pieces] = np.arange(kept.size + 1, kept.size + 1 + split_pieces.size, dtype=np.int32)
    return np.where(split[seeds], piece_id[pieces], new_id[seeds])


def split_seeds(score: np.ndarray, seeds: np.ndarray, height: float, sigma: float) -> np.ndarray:
    """Seeds split at the maxima of `score` smoothed by a Gaussian of `sigma` px (`seed_maxima`, `split_at`)."""
    if not seeds.any():
        return seeds
    smooth = ndimage.gaussian_filter(score, sigma) if sigma > 0 else score
    return split_at(seeds, seed_maxima(smooth, seeds, height))


def instance_map(
    cell: np.ndarray,
    boundary: np.ndarray,
    cfg: InferenceConfig,
    view_scale: float = 1.0,
) -> np.ndarray:
    """int32 instance labels 0 (background), 1..N from float cell and boundary probability maps of equal shape.

    `view_scale` is how many of the model's pixels one map pixel stood for (`Plan.view_scale`): it converts the
    seed splitting's smoothing from the model's view to the maps' pixels, so that an image and its enlarged
    copy are split alike.

    Same result as one watershed over the whole foreground, computed faster: a foreground component (4-connected,
    the flooding's own connectivity, so flooding never crosses between components) holding exactly one seed is
    that seed's cell outright, one holding none is dropped, and only components with several seeds are flooded.
    MT2's maps separate most touching cells by their boundary channel, so most components hold one seed.
    """
    if cell.shape != boundary.shape or cell.ndim != 2:
        raise ValueError(f"cell and boundary must be equal 2-D maps, got {cell.shape} and {boundary.shape}")
    score = np.subtract(cell, boundary, dtype=np.float32)
    foreground = score > cfg.cell_threshold
    # Seeds are kept inside the foreground even if a config puts the seed threshold below the cell threshold.
    seeds = seed_labels((score > cfg.seed_threshold) & foreground, cfg.min_seed_area)
    if cfg.seed_split_height > 0:
        seeds = split_seeds(score, seeds, cfg.seed_split_height, cfg.seed_split_sigma / view_scale)
    n_seeds = int(seeds.max(initial=0))
    if n_seeds == 0:
        return np.zeros(cell.shape, np.int32)
    components, n_components = ndimage.label(foreground, structure=FLOOD_STRUCTURE, output=np.int32)

    # Component of each seed (any one of its pixels); a seed whose pixels disagree spans several components.
    in_seed = seeds > 0
    seed_ids, seed_components = seeds[in_seed], components[in_seed]
    component_of_seed = np.zeros(n_seeds + 1, np.int32)
    component_of_seed[seed_ids] = seed_components
    seeds_per_component = np.bincount(component_of_seed[1:], minlength=n_components + 1)
    flood = seeds_per_component >= 2
    split = seed_components != component_of_seed[seed_ids]
    flood[seed_components[split]] = True
    flood[component_of_seed[seed_ids[split]]] = True
    flood[0] = False

    # Components with a single whole seed take its label directly.
    direct = np.zeros(n_components + 1, np.int32)
    seed_numbers = np.arange(1, n_seeds + 1, dtype=np.int32)
    alone = ~flood[component_of_seed[1:]]
    direct[component_of_seed[1:][alone]] = seed_numbers[alone]
    labels = direct[components]

    to_flood = flood[components]
    if to_flood.any():
        np.negative(score, out=score)
        markers = np.where(to_flood, seeds, 0)
        labels += watershed(score, markers=markers, mask=to_flood, connectivity=FLOOD_CONNECTIVITY).astype(np.int32)
    # Every seed keeps its own pixels, so the labels are already 1..N without gaps.
    return drop_small_cells(labels, cfg.min_area_ratio)


def drop_small_cells(labels: np.ndarray, ratio: float) -> np.ndarray:
    """`labels` without the cells smaller than `ratio` times the median cell area, the rest renumbered 1..N' in
    their order. Debris and slivers that an extra seed cut off a cell are far smaller than the cells around them,
    whatever the magnification; 0 keeps every cell (MT2)."""
    count = int(labels.max(initial=0))
    if ratio <= 0 or count == 0:
        return labels
    area = np.bincount(labels.ravel(), minlength=count + 1)
    keep = area >= ratio * np.median(area[1:])
    keep[0] = False
    if keep[1:].all():
        return labels
    renumber = np.zeros(count + 1, labels.dtype)
    renumber[keep] = np.arange(1, int(keep.sum()) + 1, dtype=labels.dtype)
    return renumber[labels]
