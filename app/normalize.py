"""Channel layout (one rule for every input), MT2's percentile normalisation to uint8 0..255, and the
fluorescence test.

Percentiles are taken over the NON-ZERO pixels of each channel. Microscopy images often carry large black
regions (background, padding of stitched slides, an unused channel); counted in, they drag the 1st
percentile to 0 and compress the cells into a few grey levels. Excluding zeros is what the challenge's
baseline does too. Large images take their percentiles from a regular strided subsample so that
normalisation stays a small part of the run time, and the rescaling runs in row chunks so that a
10,000 × 10,000 uint16 image never exists as a whole in float.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.config import InferenceConfig
from app.reader import read_image

# Rows are rescaled in chunks of about this many pixels (16 MB of float32 each).
CHUNK_PIXELS = 4_000_000
# The channel rule compares channels on a regular subsample of at most this many pixels.
SIGNAL_SAMPLE_PIXELS = 1_000_000
# Channels whose largest difference is at most this fraction of their range hold the same picture.
SAME_SIGNAL_TOLERANCE = 0.02
UINT8_MAX = 255.0


def _signal_sample(channel: np.ndarray) -> np.ndarray:
    return sample(channel, SIGNAL_SAMPLE_PIXELS)


def has_signal(channel: np.ndarray) -> bool:
    """A channel carries signal unless it is constant (all zero, or one value everywhere)."""
    values = _signal_sample(channel)
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]
    return values.size > 0 and float(values.max()) > float(values.min())


def same_signal(a: np.ndarray, b: np.ndarray) -> bool:
    """Two channels hold the same picture: equal up to SAME_SIGNAL_TOLERANCE of their range (lossy files)."""
    x = _signal_sample(a).astype(np.float64)
    y = _signal_sample(b).astype(np.float64)
    span = max(float(np.nanmax(x) - np.nanmin(x)), float(np.nanmax(y) - np.nanmin(y)), 1e-12)
    return float(np.nanmax(np.abs(x - y))) <= SAME_SIGNAL_TOLERANCE * span


def channel_sources(img: np.ndarray) -> tuple[int | None, int | None, int | None]:
    """Which input channel each of the three output channels copies (None: left empty), by the channel rule.

    The rule, in order:
    1. an alpha channel (the 4th) is dropped;
    2. a channel without signal (constant) is empty; channels holding the same picture count once;
    3. one distinct signal (grey, or the signal in any one channel, or grey stored as RGB) becomes grey: the
       signal in all three channels;
    4. two distinct signals with the other channel empty (2-channel files, RGB with one empty channel) keep their
       order and go to green and blue, red empty: cytoplasm + nuclei fluorescence as (first, second);
    5. anything else (three signals: colour stains, brightfield RGB) stays as it is.

    Decided once per image, so a whole slide streamed tile by tile takes the decision of its overview
    (`app.slides`) and every tile is laid out alike.
    """
    if img.ndim == 2:
        img = img[..., np.newaxis]
    channels = img.shape[2] if img.ndim == 3 else 0
    if channels not in (1, 2, 3, 4):
        raise ValueError(f"to_rgb expects H×W×C with C in 1..4, got shape {img.shape}")
    if channels == 1:
        return 0, 0, 0
    channels = min(channels, 3)
    live = [c for c in range(channels) if has_signal(img[..., c])]
    distinct: list[int] = []
    for c in live:
        if not any(same_signal(img[..., c], img[..., d]) for d in distinct):
            distinct.append(c)
    if len(distinct) == 0:
        return 0, 0, 0
    if len(distinct) == 1:
        return distinct[0], distinct[0], distinct[0]
    if len(distinct) == 2 and len(live) == 2:
        return None, live[0], live[1]
    return 0, 1, 2


def apply_sources(img: np.ndarray, sources: Sequence[int | None]) -> np.ndarray:
    """H×W×C to H×W×3 by `channel_sources`' decision: output channel k copies input channel sources[k] (None: 0)."""
    if img.ndim == 2:
        img = img[..., np.newaxis]
    first = sources[0]
    if first is not None and sources[1] == first and sources[2] == first:
        return np.repeat(img[..., first : first + 1], 3, axis=2)
    if tuple(sources) == (0, 1, 2):
        return np.ascontiguousarray(img[..., :3])
    out = np.zeros(img.shape[:2] + (3,), dtype=img.dtype)
    for k, c in enumerate(sources):
        if c is not None:
            out[..., k] = img[..., c]
    return out


def to_rgb(img: np.ndarray) -> np.ndarray:
    """H×W×C (C in 1..4) to the H×W×3 layout the model is trained on (training reads through this too), by the
    channel rule (`channel_sources`)."""
    return apply_sources(img, channel_sources(img))


def sample(channel: np.ndarray, max_pixels: int) -> np.ndarray:
    """A deterministic strided view of a 2-D channel with at most about `max_pixels` pixels."""
    step = max(1, math.ceil(math.sqrt(channel.size / max(1, max_pixels))))
    return channel[::step, ::step]


def channel_range(channel: np.ndarray, cfg: InferenceConfig) -> tuple[float, float] | None:
    """Input range (low, high) mapped to 0..255 for one channel, or None for a channel without signal.

    low/high are the configured percentiles of the finite non-zero pixels. When they coincide (a two-level
    image such as bright shapes on black) the low end falls back to 0 if the channel has zeros, so the shapes
    stay visible; a channel that is all zero or everywhere the same value carries no signal.
    """
    values = sample(channel, cfg.norm_sample_pixels).ravel()
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]
    nonzero = values[values != 0]
    if nonzero.size == 0:
        return None
    low, high = np.percentile(nonzero, [cfg.norm_low_percentile, cfg.norm_high_percentile])
    low, high = float(low), float(high)
    if high <= low and nonzero.size < values.size:
        low = 0.0
    if high <= low:
        return None
    return low, high


def channel_ranges(rgb: np.ndarray, cfg: InferenceConfig) -> tuple[tuple[float, float] | None, ...]:
    """`channel_range` of each of the three channels of an H×W×3 image."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"normalize expects H×W×3, got shape {rgb.shape}")
    return tuple(channel_range(rgb[..., c], cfg) for c in range(3))


def apply_ranges(rgb: np.ndarray, ranges: tuple[tuple[float, float] | None, ...]) -> np.ndarray:
    """H×W×3 of any numeric dtype to uint8 H×W×3: each channel's (low, high) to 0..255, clipped; a channel
    without a range (None) becomes zeros; NaN and ±inf pixels become 0. Rescaled in row chunks, so a large
    image never exists whole in float."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"normalize expects H×W×3, got shape {rgb.shape}")
    height, width = rgb.shape[:2]
    out = np.zeros((height, width, 3), np.uint8)
    rows = max(1, CHUNK_PIXELS // max(1, width))
    exact32 = rgb.dtype.itemsize <= 2 or rgb.dtype == np.float32
    work: type[np.floating] = np.float32 if exact32 else np.float64
    for c, bounds in enumerate(ranges):
        if bounds is None:
            continue
        channel = rgb[..., c]
        low, high = bounds
        gain = UINT8_MAX / (high - low)
        for top in range(0, height, rows):
            source = channel[top : top + rows]
            chunk = source.astype(work)
            chunk -= work(low)
            chunk *= work(gain)
            np.clip(chunk, 0.0, UINT8_MAX, out=chunk)
            if rgb.dtype.kind == "f":
                chunk[~np.isfinite(source)] = 0.0
            out[top : top + rows, :, c] = chunk.astype(np.uint8)
    return out


def normalize(rgb: np.ndarray, cfg: InferenceConfig) -> np.ndarray:
    """H×W×3 of any numeric dtype to uint8 H×W×3: per channel, percentile range to 0..255, clipped
    (`channel_ranges`, then `apply_ranges`).

    Channels without signal become zeros; NaN and ±inf pixels become 0.
    """
    return apply_ranges(rgb, channel_ranges(rgb, cfg))


def is_fluorescence(rgb_u8: np.ndarray, cfg: InferenceConfig) -> bool:
    """Fluorescence: bright objects on a dark background, recognised in the canonical layout (`to_rgb`).

    Below `cfg.fluorescence_max_side`, either the red channel is empty and another holds signal (MT2's rule:
    two-signal fluorescence goes to green and blue), or the image is grey and the median of its normalised
    pixels is below `cfg.fluorescence_grey_median` (a dark background: phase contrast, DIC and brightfield
    backgrounds are mid-grey or bright).
    """
    if max(rgb_u8.shape[:2]) >= cfg.fluorescence_max_side:
        return False
    channels = [sample(rgb_u8[..., c], SIGNAL_SAMPLE_PIXELS) for c in range(3)]
    if not channels[0].any():
        return bool(channels[1].any() or channels[2].any())
    grey = np.array_equal(channels[0], channels[1]) and np.array_equal(channels[1], channels[2])
    return grey and float(np.median(channels[0])) < cfg.fluorescence_grey_median


def image_class(rgb_u8: np.ndarray, cfg: InferenceConfig) -> str:
    """Which kind of image (`IMAGE_CLASSES`) a normalised image is: "stained" when all three channels carry
    different signals (colour stains; the channel rule keeps only those as three channels), "fluorescence" by
    `is_fluorescence`, else "grey"."""
    channels = [sample(rgb_u8[..., c], SIGNAL_SAMPLE_PIXELS) for c in range(3)]
    filled = all(bool(c.any()) for c in channels)
    if filled and not (np.array_equal(channels[0], channels[1]) and np.array_equal(channels[1], channels[2])):
        return "stained"
    return "fluorescence" if is_fluorescence(rgb_u8, cfg) else "grey"


def read_normalized(path: Path | str, max_pixels: int, cfg: InferenceConfig) -> np.ndarray:
    """Any supported file -> normalised uint8 H×W×3, exactly as `predict` prepares it (for training and tuning)."""
    return normalize(to_rgb(read_image(path, max_pixels)), cfg)
