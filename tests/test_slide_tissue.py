"""Tissue on a slide's overview: glass is the most common colour, specks are not tissue, a tile is segmented
when its haloed crop meets tissue."""

from __future__ import annotations

import numpy as np

from app.slides.tissue import densest_point, glass_colour, tissue_mask, tissue_tiles
from app.tiling import tile_grid


def overview() -> np.ndarray:
    """100 × 120 bright glass with a dark 20 × 10 patch at rows 40-60, columns 90-100 and one dark speck."""
    image = np.full((100, 120, 3), (240, 238, 242), np.uint8)
    image[40:60, 90:100] = (120, 70, 150)
    image[10, 10] = (0, 0, 0)
    return image


def test_glass_is_the_most_common_colour_and_specks_are_not_tissue() -> None:
    image = overview()
    assert glass_colour(image).tolist() == [240, 238, 242]
    mask = tissue_mask(image, 20)
    assert mask[41:59, 91:99].all() and 196 <= mask.sum() <= 200 and not mask[10, 10]  # the patch (less its
    # corners, which the median filter rounds off), not the speck
    assert not tissue_mask(np.full((5, 5, 3), 200, np.uint8), 20).any()  # all glass
    assert tissue_mask(image, 0).all()  # contrast 0: everything is segmented


def test_tiles_meeting_tissue_through_their_halo_are_kept() -> None:
    mask = tissue_mask(overview(), 20)
    factor = (10.0, 10.0)  # one overview pixel per 10 x 10 slide pixels: the slide is 1000 x 1200
    tiles = tile_grid(1000, 1200, 300, 40)
    kept = tissue_tiles(mask, factor, tiles)
    # Tissue covers slide rows 400-600 and columns 900-1000: the cores holding it, and those whose crop reaches
    # it through the halo and one overview pixel of margin (rows 600-900 start at 560, columns 600-900 end at 940).
    cores = [tiles[i].core for i in kept]
    assert cores == [(300, 600, 600, 900), (300, 600, 900, 1200), (600, 900, 600, 900), (600, 900, 900, 1200)]
    assert tissue_tiles(np.zeros_like(mask), factor, tiles) == []
    assert len(tissue_tiles(np.ones_like(mask), factor, tiles)) == len(tiles)


def test_the_size_estimate_looks_at_the_densest_tissue() -> None:
    mask = tissue_mask(overview(), 20)
    y, x = densest_point(mask, (10.0, 10.0), [100, 800])
    assert 400 <= y <= 600 and 900 <= x <= 1000
    # A large square alone has many best places (any that holds the whole patch); the small one picks the patch.
    mask = np.zeros((200, 200), bool)
    mask[20:50, 150:180] = True
    y, x = densest_point(mask, (10.0, 10.0), [50, 1000])
    assert 200 <= y < 500 and 1500 <= x < 1800
    assert densest_point(np.zeros((10, 20), bool), (4.0, 4.0), [100]) == (20, 40)  # no tissue: the centre
