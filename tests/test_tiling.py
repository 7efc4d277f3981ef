"""Window placement: coverage, flush last window, no duplicates, small images; one-pass inputs and their cost."""

from __future__ import annotations

import numpy as np
import pytest

from app.tiling import model_load, one_pass_shape, window_grid, window_starts


def test_regular_starts_end_flush():
    assert window_starts(1024, 512, 256).tolist() == [0, 256, 512]


def test_last_window_flush_when_stride_does_not_divide():
    assert window_starts(1200, 512, 256).tolist() == [0, 256, 512, 688]


def test_no_duplicate_when_last_start_is_on_the_grid():
    starts = window_starts(768, 512, 256)
    assert starts.tolist() == [0, 256]
    assert len(set(starts.tolist())) == len(starts)


@pytest.mark.parametrize("length", [1, 100, 511, 512])
def test_single_window_when_image_fits(length):
    assert window_starts(length, 512, 256).tolist() == [0]


def test_one_pixel_longer_than_window():
    assert window_starts(513, 512, 256).tolist() == [0, 1]


def test_stride_larger_than_window_still_flush():
    assert window_starts(2000, 512, 1000).tolist() == [0, 1000, 1488]


@pytest.mark.parametrize("length,stride", [(1200, 256), (900, 128), (4097, 512), (513, 7)])
def test_every_pixel_covered(length, stride):
    starts = window_starts(length, 512, stride)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + 512] = True
    assert covered.all()
    assert starts[-1] + 512 == length
    assert np.all(np.diff(starts) > 0)


def test_invalid_stride_refused():
    with pytest.raises(ValueError, match="stride"):
        window_starts(1000, 512, 0)


def test_grid_row_major():
    grid = window_grid(900, 1200, 512, 512)
    assert grid == [(0, 0), (0, 512), (0, 688), (388, 0), (388, 512), (388, 688)]


def test_one_pass_shape_pads_to_the_size_multiple_up_to_the_limit():
    assert one_pass_shape(300, 200, 1024) == (320, 224)
    assert one_pass_shape(1024, 64, 1024) == (1024, 64)
    assert one_pass_shape(1025, 64, 1024) is None  # a side above the limit: windows
    assert one_pass_shape(300, 200, 0) is None  # 0: always windows


def test_model_load_counts_pixels_for_one_pass_and_windows_otherwise():
    assert model_load(1000, 1000, 512, 256, 1024) == (1024 * 1024 / 512**2, 1024 * 1024)  # 4 windows' pixels
    assert model_load(1000, 1000, 512, 256, 0) == (9, 1000 * 1000)  # a 3 x 3 grid
    assert model_load(300, 200, 512, 256, 0) == (1, 512 * 512)  # one window, padded
    assert model_load(300, 200, 512, 256, 1024) == (320 * 224 / 512**2, 320 * 224)
