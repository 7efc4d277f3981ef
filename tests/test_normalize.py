"""Channel handling, non-zero percentile normalisation and the fluorescence rule."""

from __future__ import annotations

import numpy as np
import pytest

from app.config import InferenceConfig
from app.normalize import channel_range, is_fluorescence, normalize, sample, to_rgb

CFG = InferenceConfig()


def test_to_rgb_layouts() -> None:
    gray = np.arange(6, dtype=np.uint16).reshape(2, 3, 1)
    np.testing.assert_array_equal(to_rgb(gray), np.repeat(gray, 3, axis=2))
    two = np.stack([np.full((2, 3), 5), np.full((2, 3), 7)], axis=2).astype(np.uint8)
    out = to_rgb(two)
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[..., :2], two)
    assert not out[..., 2].any()
    rgba = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(to_rgb(rgba), rgba[..., :3])
    np.testing.assert_array_equal(to_rgb(gray[..., 0]), np.repeat(gray, 3, axis=2))
    with pytest.raises(ValueError):
        to_rgb(np.zeros((2, 3, 5)))


def test_percentiles_ignore_zero_background() -> None:
    """A mostly black image keeps its full contrast: zeros do not drag the low percentile to 0."""
    rng = np.random.default_rng(1)
    channel = np.zeros((200, 200), np.uint16)
    channel[50:150, 50:150] = rng.integers(1000, 2001, (100, 100))
    low, high = channel_range(channel, CFG)
    assert 1000 <= low <= 1020 and 1980 <= high <= 2000
    out = normalize(to_rgb(channel[..., None]), CFG)
    assert out.dtype == np.uint8 and out.shape == (200, 200, 3)
    assert out[0, 0, 0] == 0
    inside = out[50:150, 50:150, 0]
    assert inside.min() == 0 and inside.max() == 255
    assert 100 < inside.mean() < 155  # uniform values spread over the whole range


def test_values_outside_percentiles_are_clipped() -> None:
    channel = np.arange(1, 10001, dtype=np.float64).reshape(100, 100)
    out = normalize(to_rgb(channel[..., None]), CFG)[..., 0]
    assert out.ravel()[:100].max() == 0  # below the 1st percentile
    assert out.ravel()[-100:].min() == 255  # above the 99th
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)  # monotone


def test_all_zero_and_constant_channels_become_zero() -> None:
    assert not normalize(np.zeros((20, 30, 3), np.uint16), CFG).any()
    assert not normalize(np.full((20, 30, 3), 700, np.uint16), CFG).any()


def test_two_level_image_keeps_its_shapes() -> None:
    """Bright shapes of one value on black: the constant non-zero values map to 255, black stays 0."""
    img = np.zeros((20, 30, 3), np.uint8)
    img[5:10, 5:10] = 220
    out = normalize(img, CFG)
    assert set(np.unique(out)) == {0, 255}
    np.testing.assert_array_equal(out > 0, img > 0)


def test_empty_channel_stays_empty_and_others_are_independent() -> None:
    rng = np.random.default_rng(2)
    img = np.zeros((50, 60, 3), np.uint16)
    img[..., 1] = rng.integers(1, 100, (50, 60))
    img[..., 2] = rng.integers(10_000, 60_000, (50, 60))
    out = normalize(img, CFG)
    assert not out[..., 0].any()
    assert out[..., 1].max() == 255 and out[..., 2].max() == 255


def test_nan_and_inf_become_zero() -> None:
    img = np.random.default_rng(3).random((30, 30, 3)).astype(np.float32) + 1.0
    img[0, 0] = np.nan
    img[0, 1] = np.inf
    img[0, 2] = -np.inf
    out = normalize(img, CFG)
    assert not out[0, :3].any()
    assert out.max() == 255


def test_negative_and_wide_integer_types() -> None:
    img = np.stack([np.linspace(-5000, 5000, 400).reshape(20, 20)] * 3, axis=2).astype(np.int32)
    out = normalize(img, CFG)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255


def test_large_images_use_a_bounded_deterministic_sample() -> None:
    channel = np.random.default_rng(5).integers(1, 1001, (3000, 2000), dtype=np.uint16)
    small = InferenceConfig(norm_sample_pixels=10_000)
    view = sample(channel, small.norm_sample_pixels)
    assert view.size <= 10_000 * 1.1 and np.shares_memory(view, channel)
    a, b = channel_range(channel, small), channel_range(channel, small)
    assert a == b
    exact = channel_range(channel, InferenceConfig(norm_sample_pixels=channel.size))
    assert abs(a[0] - exact[0]) <= 5 and abs(a[1] - exact[1]) <= 5


def test_chunked_rescaling_equals_one_pass() -> None:
    """Rows are processed in chunks; the result must not depend on where chunks end."""
    import app.normalize as module

    rng = np.random.default_rng(4)
    img = rng.integers(0, 65536, (97, 41, 3), dtype=np.uint16)
    whole = normalize(img, CFG)
    saved = module.CHUNK_PIXELS
    try:
        module.CHUNK_PIXELS = 41 * 5  # 5 rows per chunk, last chunk shorter
        chunked = normalize(img, CFG)
    finally:
        module.CHUNK_PIXELS = saved
    np.testing.assert_array_equal(whole, chunked)


def test_fluorescence_rule() -> None:
    img = np.zeros((100, 100, 3), np.uint8)
    img[..., 2] = 200
    assert is_fluorescence(img, CFG)
    img[0, 0, 0] = 1
    assert not is_fluorescence(img, CFG)
    wide = np.zeros((10, CFG.fluorescence_max_side, 3), np.uint8)
    assert not is_fluorescence(wide, CFG)
    assert is_fluorescence(wide[:, :-1], CFG)
