"""Where a slide has tissue: found on its normalised overview, so blank glass is never read at full resolution
nor shown to the model.

Glass is the slide's most common colour: per channel, the peak of the overview's histogram (a scanned slide is
mostly glass, and glass is flat while tissue spreads over many colours). An overview pixel is tissue when a
channel differs from the glass by more than `cfg.slide_tissue_contrast` grey levels after a 3 × 3 median filter
(noise and dust specks of one overview pixel are not tissue). A tile is segmented when its haloed crop, widened by
one overview pixel, holds tissue: a cell whose owner point lies in a core has pixels in that core's crop, so no
cell on tissue is lost at a skipped neighbour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from app.tiling import Tile

UINT8_LEVELS = 256


def glass_colour(overview_u8: np.ndarray) -> np.ndarray:
    """The most common value of each channel of a normalised H×W×3 overview (the glass's colour)."""
    return np.array([int(np.bincount(overview_u8[..., c].ravel(), minlength=UINT8_LEVELS).argmax())
                     for c in range(overview_u8.shape[2])])


def tissue_mask(overview_u8: np.ndarray, contrast: float) -> np.ndarray:
    """Boolean H×W: overview pixels that differ from the glass by more than `contrast` in some channel (after
    a 3 × 3 median filter); everything when `contrast` is 0."""
    if contrast <= 0:
        return np.ones(overview_u8.shape[:2], bool)
    glass = glass_colour(overview_u8)
    difference = np.abs(overview_u8.astype(np.int16) - glass.astype(np.int16)).max(axis=2)
    return ndimage.median_filter(difference, size=3, mode="nearest") > contrast


def _overview_span(start: int, stop: int, factor: float, length: int) -> tuple[int, int]:
    """Overview indices covering full-resolution [start, stop), widened by one overview pixel each way."""
    return max(0, math.floor(start / factor) - 1), min(length, math.ceil(stop / factor) + 1)


def tissue_tiles(mask: np.ndarray, factor: tuple[float, float], tiles: Sequence[Tile]) -> list[int]:
    """Indices of the tiles whose haloed crop holds tissue (`mask` is the overview's, `factor` the full-resolution
    pixels per overview pixel along y and x)."""
    counts = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # summed-area table
    h, w = mask.shape
    kept = []
    for index, tile in enumerate(tiles):
        y0, y1, x0, x1 = tile.crop
        a, b = _overview_span(y0, y1, factor[0], h)
        c, d = _overview_span(x0, x1, factor[1], w)
        if counts[b, d] - counts[a, d] - counts[b, c] + counts[a, c] > 0:
            kept.append(index)
    return kept


def densest_point(mask: np.ndarray, factor: tuple[float, float], sides: Sequence[int]) -> tuple[int, int]:
    """Full-resolution (y, x) where squares of every one of `sides` (px) hold the most tissue together (the
    slide's centre when there is none): where the cell size is estimated, each look on a central square of its
    own side, so the small squares must fall on tissue as well as the large ones."""
    h, w = mask.shape
    if not mask.any():
        return int(h * factor[0] / 2), int(w * factor[1] / 2)
    density = np.zeros(mask.shape, np.float32)
    for side in sides:
        window = (max(1, round(side / factor[0])), max(1, round(side / factor[1])))
        density += ndimage.uniform_filter(mask.astype(np.float32), size=window, mode="constant")
    y, x = np.unravel_index(int(density.argmax()), density.shape)
    return int((y + 0.5) * factor[0]), int((x + 0.5) * factor[1])


__all__ = ["densest_point", "glass_colour", "tissue_mask", "tissue_tiles"]
