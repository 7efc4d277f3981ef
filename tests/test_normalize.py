"""Channel handling, non-zero percentile normalisation and the fluorescence rule."""

from __future__ import annotations

import numpy as np
import pytest

from app.config import InferenceConfig
from app.normalize import channel_range, image_class, is_fluorescence, normalize, sample, to_rgb

CFG = InferenceConfig()


def test_to_rgb_layouts() -> None:
    gray = np.arange(6, dtype=np.uint16).reshape(2, 3, 1)
    np.testing.assert_array_equal(to_rgb(gray), np.repeat(gray, 3, axis=2))
    np.testing.assert_array_equal(to_rgb(gray[..., 0]), np.repeat(gray, 3, axis=2))
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 200, (2, 8, 9)).astype(np.uint8)
    two = np.stack([a, b], axis=2)  # two signals: kept in order, in green and blue
    np.testing.assert_array_equal(to_rgb(two), np.stack([np.zeros_like(a), a, b], axis=2))
    rgb = np.stack([a, b, (a // 2 + b // 2)], axis=2)  # three signals: colour, unchanged
    np.testing.assert_array_equal(to_rgb(rgb), rgb)
    rgba = np.concatenate([rgb, np.full_like(a, 255)[..., None]], axis=2)
    np.testing.assert_array_equal(to_rgb(rgba), rgb)
    empty_red = np.stack([np.zeros_like(a), a, b], axis=2)
    np.testing.assert_array_equal(to_rgb(empty_red), empty_red)
    empty_blue = np.stack([a, b, np.zeros_like(a)], axis=2)
    np.testing.assert_array_equal(to_rgb(empty_blue), empty_red)
    with pytest.raises(ValueError):
        to_rgb(np.zeros((2, 3, 5)))


def _one_signal_layouts(signal: np.ndarray) -> dict[str, np.ndarray]:
    """The same single-signal image as grey, RGB with the signal in each channel, grey-as-RGB(A), 2-channel."""
    zero = np.zeros_like(signal)
    out = {"grey": signal, "grey_hw1": signal[..., None], "rgb_grey": np.stack([signal] * 3, axis=2),
           "rgba_grey": np.stack([signal] * 3 + [np.full_like(signal, 255)], axis=2),
           "two_first": np.stack([signal, zero], axis=2), "two_second": np.stack([zero, signal], axis=2)}
    for c, name in enumerate("rgb"):
        channels = [zero, zero, zero]
        channels[c] = signal
        out[f"only_{name}"] = np.stack(channels, axis=2)
    out["two_of_three"] = np.stack([zero, signal, signal], axis=2)
    return out


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_one_signal_gives_one_canonical_image_whatever_its_layout(dtype) -> None:
    rng = np.random.default_rng(3)
    signal = (rng.random((24, 30)) * (200 if dtype == np.uint8 else 4000)).astype(dtype)
    expected = np.stack([signal] * 3, axis=2)
    for name, layout in _one_signal_layouts(signal).items():
        np.testing.assert_array_equal(to_rgb(layout), expected, err_msg=name)
        np.testing.assert_array_equal(normalize(to_rgb(layout), CFG), normalize(expected, CFG), err_msg=name)


def test_lossy_copies_of_one_signal_count_once() -> None:
    rng = np.random.default_rng(4)
    signal = rng.integers(20, 220, (32, 32)).astype(np.int16)
    jpeg_like = np.stack([signal, signal + rng.integers(-2, 3, signal.shape), signal], axis=2).astype(np.uint8)
    assert np.array_equal(to_rgb(jpeg_like)[..., 0], to_rgb(jpeg_like)[..., 2])  # grey: one channel repeated


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
    assert is_fluorescence(img, CFG)  # empty red, signal elsewhere
    img[0, 0, 0] = 1
    assert not is_fluorescence(img, CFG)
    assert not is_fluorescence(np.zeros((100, 100, 3), np.uint8), CFG)  # nothing at all
    wide = np.zeros((10, CFG.fluorescence_max_side, 3), np.uint8)
    wide[..., 1] = 90
    assert not is_fluorescence(wide, CFG)
    assert is_fluorescence(wide[:, :-1], CFG)


def _discs(background: int, foreground: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((128, 128), float(background))
    yy, xx = np.mgrid[:128, :128]
    for cy, cx in rng.integers(10, 118, (12, 2)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = foreground
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_grey_fluorescence_is_a_dark_background_with_bright_objects() -> None:
    dark = normalize(to_rgb(_discs(10, 200)), CFG)  # nuclei on black
    assert is_fluorescence(dark, CFG)
    phase = np.minimum(_discs(120, 230), _discs(255, 40))  # bright halos and dark cells on a mid-grey field
    assert not is_fluorescence(normalize(to_rgb(phase), CFG), CFG)
    bright = normalize(to_rgb(_discs(220, 90)), CFG)  # dark cells on a bright brightfield background
    assert not is_fluorescence(bright, CFG)
    colour = np.stack([_discs(220, 120, 1), _discs(200, 60, 1), _discs(230, 150, 1)], axis=2)
    assert not is_fluorescence(normalize(to_rgb(colour), CFG), CFG)


def test_image_classes_follow_the_channel_rule() -> None:
    rng = np.random.default_rng(3)
    dark = np.zeros((64, 64), np.uint8)
    dark[20:30, 20:30] = 200  # bright objects on a dark background
    bright = rng.integers(90, 200, (64, 64)).astype(np.uint8)  # mid-grey background: phase contrast, DIC
    a, b = rng.integers(1, 255, (2, 64, 64)).astype(np.uint8)
    cases = {
        "stained": np.stack([a, b, a // 2 + b // 2], axis=2),  # three signals: colour stains
        "fluorescence": np.stack([np.zeros_like(a), a, b], axis=2),  # two signals, red empty
        "grey": np.stack([bright] * 3, axis=2),
    }
    for kind, image in cases.items():
        assert image_class(normalize(to_rgb(image), CFG), CFG) == kind
    dark_rgb = normalize(to_rgb(dark), CFG)
    assert image_class(dark_rgb, CFG) == "fluorescence" and is_fluorescence(dark_rgb, CFG)
