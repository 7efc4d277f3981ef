"""Whole-image vs whole-slide path: same cells, one owner per cell at seams, memory bounded per tile."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from app.config import InferenceConfig
from app.infer import Plan
from app.metric import image_f1
from app.runner import ModelRunner
from app.segment import cut_by_halo, owned_labels, paste_owned, segment, segment_tiled
from app.tiling import Tile, tile_grid

# Half scale keeps the model's share of the 4000 x 4000 test small and exercises the resize at crop edges.
PLAN = Plan((0.5,), 256, "test plan")
# Whole image below 1 MP, tiles of 1000 (16 on 4000 x 4000) with a halo wider than any disc.
TILED = InferenceConfig(window=256, stride=256, batch_size=16, tile_threshold_pixels=1_000_000,
                        tile_size=1000, tile_halo=64, tile_workers=1)
WHOLE = TILED.with_overrides(tile_threshold_pixels=10**9)


def disc_scene(side: int, spacing: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB image, int32 ground truth) of discs of radius 6..20 on a grid through every 1000-pixel seam.

    Centres sit on multiples of `spacing`, so whole rows and columns of discs straddle the tile seams at
    multiples of 1000, and one disc is centred exactly on every seam crossing.
    """
    rng = np.random.default_rng(seed)
    gray = np.zeros((side, side), np.uint8)
    truth = np.zeros((side, side), np.int32)
    yy, xx = np.mgrid[-20:21, -20:21]
    n = 0
    for cy in range(spacing, side - 20, spacing):
        for cx in range(spacing, side - 20, spacing):
            r = int(rng.integers(6, 21))
            disc = yy**2 + xx**2 <= r * r
            n += 1
            gray[cy - 20 : cy + 21, cx - 20 : cx + 21][disc] = 220
            truth[cy - 20 : cy + 21, cx - 20 : cx + 21][disc] = n
    return np.repeat(gray[:, :, None], 3, axis=2), truth


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    return disc_scene(4000)


def one_to_one(truth: np.ndarray, labels: np.ndarray) -> tuple[int, int, int]:
    """(pairs, truth ids, label ids) of overlapping (truth, label) pairs; equal counts mean a bijection."""
    both = (truth > 0) & (labels > 0)
    base = int(labels.max()) + 1
    keys = np.unique(truth[both].astype(np.int64) * base + labels[both])
    return keys.size, np.unique(keys // base).size, np.unique(keys % base).size


def test_tile_grid_cores_partition_the_image() -> None:
    tiles = tile_grid(2500, 1200, 1000, 64)
    assert len(tiles) == 6
    cover = np.zeros((2500, 1200), np.int32)
    for t in tiles:
        y0, y1, x0, x1 = t.core
        cover[y0:y1, x0:x1] += 1
        assert t.crop[0] == max(0, y0 - 64) and t.crop[1] == min(2500, y1 + 64)
    assert (cover == 1).all()
    with pytest.raises(ValueError, match="tile size"):
        tile_grid(10, 10, 0, 4)


def test_owner_is_the_bounding_box_centre_in_global_coordinates() -> None:
    tile = Tile(core=(100, 200, 100, 200), crop=(50, 250, 50, 250))
    labels = np.zeros((200, 200), np.int32)
    labels[40:61, 40:61] = 1  # centre (100, 100) global: first core pixel, owned
    labels[140:161, 140:161] = 2  # centre (200, 200) global: next tile's core
    labels[0:10, 0:10] = 3  # in the halo only
    labels[90:111, 10:31] = 4  # centre (150, 70) global: left of the core
    assert owned_labels(labels, tile).tolist() == [1]


def test_cells_reaching_an_inner_crop_edge_count_as_cut_by_the_halo() -> None:
    from scipy import ndimage

    inner = Tile(core=(100, 200, 100, 200), crop=(50, 250, 50, 250))
    labels = np.zeros((200, 200), np.int32)
    labels[0:60, 40:61] = 1  # reaches the crop's top edge, which lies inside the image: cut
    labels[90:111, 90:111] = 2  # well inside the crop
    labels[150:200, 90:111] = 3  # reaches the bottom edge: cut
    boxes = ndimage.find_objects(labels)
    assert cut_by_halo(boxes, np.array([1, 2, 3]), inner, 400, 400) == 2
    assert cut_by_halo(boxes, np.array([2]), inner, 400, 400) == 0
    corner = Tile(core=(0, 100, 0, 100), crop=(0, 200, 0, 200))  # crop edges at the image's top and left
    corner_labels = np.zeros((200, 200), np.int32)
    corner_labels[0:30, 0:30] = 1  # touches only the image border: whole
    assert cut_by_halo(ndimage.find_objects(corner_labels), np.array([1]), corner, 400, 400) == 0


def test_a_halo_smaller_than_the_cells_is_reported(runner: ModelRunner, caplog: pytest.LogCaptureFixture) -> None:
    image, _ = disc_scene(1500, seed=5)
    with caplog.at_level("WARNING", logger="app.segment"):
        segment_tiled(image, runner, PLAN, TILED, workers=0)
    assert not caplog.records  # discs of at most 41 px inside a 64 px halo
    with caplog.at_level("WARNING", logger="app.segment"):
        segment_tiled(image, runner, PLAN, TILED.with_overrides(tile_halo=8), workers=0)
    assert len(caplog.records) == 1 and "8 px tile halo" in caplog.records[0].getMessage()


def test_paste_gives_global_ids_and_never_overwrites() -> None:
    out = np.zeros((6, 6), np.uint32)
    out[0, 0] = 7
    tile = Tile(core=(0, 6, 0, 6), crop=(0, 4, 0, 4))
    labels = np.array([[1, 1, 0, 0], [0, 0, 0, 3], [2, 0, 0, 3], [0, 0, 0, 0]], np.int32)
    offset = paste_owned(out, labels, np.array([1, 3]), tile, offset=7)
    assert offset == 9
    assert out[0, 0] == 7 and out[0, 1] == 8 and out[1, 3] == 9 and out[2, 0] == 0


def test_tiled_matches_untiled_on_4000_square(runner: ModelRunner, scene) -> None:
    image, truth = scene
    whole = segment(image, runner, PLAN, WHOLE)
    tiled = segment(image, runner, PLAN, TILED)
    assert whole.dtype == np.int32 and tiled.dtype == np.uint32 and tiled.shape == image.shape[:2]
    assert image_f1(whole, tiled).f1 >= 0.99
    # Every disc, those straddling seams included, is exactly one label, and every label is one disc.
    n = int(truth.max())
    assert int(np.unique(tiled[tiled > 0]).size) == n
    assert one_to_one(truth, tiled) == (n, n, n)


def test_worker_count_does_not_change_the_result(runner: ModelRunner) -> None:
    image, _ = disc_scene(1500, seed=3)
    serial = segment_tiled(image, runner, PLAN, TILED, workers=0)
    for workers in (1, 2):
        np.testing.assert_array_equal(segment_tiled(image, runner, PLAN, TILED, workers=workers), serial)


def test_timings_report_every_stage(runner: ModelRunner) -> None:
    image, _ = disc_scene(1200, seed=4)
    timings: dict[str, float] = {}
    segment(image, runner, PLAN, TILED, timings)
    assert {"resize", "model", "fuse", "postprocess", "paste"} <= set(timings)
    assert all(v >= 0 for v in timings.values())


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_does_not_grow_with_the_number_of_tiles(runner: ModelRunner) -> None:
    image, _ = disc_scene(1500, seed=5)
    base = image.nbytes + image.shape[0] * image.shape[1] * 4  # input + uint32 label map
    peaks = {}
    for size in (250, 500):  # 36 and 9 tiles
        cfg = TILED.with_overrides(tile_size=size)
        peaks[size] = _peak_bytes(lambda: segment(image, runner, PLAN, cfg)) - image.nbytes
    untiled = _peak_bytes(lambda: segment(image, runner, PLAN, WHOLE)) - image.nbytes
    # Four times as many tiles do not need more memory; what is held beyond the label map is per tile.
    assert peaks[250] <= peaks[500]
    crop_pixels = (500 + 2 * 64) ** 2
    assert peaks[500] - (base - image.nbytes) < 60 * crop_pixels
    assert peaks[500] < untiled
    assert base > 0
