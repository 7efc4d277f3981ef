"""Channel handling, MT2's percentile normalisation to uint8 0..255, and the fluorescence test.

Percentiles are taken over the NON-ZERO pixels of each channel. Microscopy images often carry large black
regions (background, padding of stitched slides, an unused channel); counted in, they drag the 1st
percentile to 0 and compress the cells into a few grey levels. Excluding zeros is what the challenge's
baseline does too. Large images take their percentiles from a regular strided subsample so that
normalisation stays a small part of the run time, and the rescaling runs in row chunks so that a
10,000 × 10,000 uint16 image never exists as a whole in float.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from app.config import InferenceConfig
from app.reader import read_image

# Rows are rescaled in chunks of about this many pixels (16 MB of float32 each).
CHUNK_PIXELS = 4_000_000
UINT8_MAX = 255.0


def to_rgb(img: np.ndarray) -> np.ndarray:
    """H×W×C (C in 1..4) to H×W×3: gray repeated, alpha dropped, a 2-channel image gets an empty third."""
    if img.ndim == 2:
        img = img[..., np.newaxis]
    channels = img.shape[2] if img.ndim == 3 else 0
    if channels == 1:
        return np.repeat(img, 3, axis=2)
    if channels == 2:
        return np.concatenate([img, np.zeros_like(img[..., :1])], axis=2)
    if channels in (3, 4):
        return img[..., :3]
    raise ValueError(f"to_rgb expects H×W×C with C in 1..4, got shape {img.shape}")


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


def normalize(rgb: np.ndarray, cfg: InferenceConfig) -> np.ndarray:
    """H×W×3 of any numeric dtype to uint8 H×W×3: per channel, percentile range to 0..255, clipped.

    Channels without signal become zeros; NaN and ±inf pixels become 0.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"normalize expects H×W×3, got shape {rgb.shape}")
    height, width = rgb.shape[:2]
    out = np.zeros((height, width, 3), np.uint8)
    rows = max(1, CHUNK_PIXELS // max(1, width))
    exact32 = rgb.dtype.itemsize <= 2 or rgb.dtype == np.float32
    work = np.float32 if exact32 else np.float64
    for c in range(3):
        channel = rgb[..., c]
        bounds = channel_range(channel, cfg)
        if bounds is None:
            continue
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


def is_fluorescence(rgb_u8: np.ndarray, cfg: InferenceConfig) -> bool:
    """MT2's modality rule: the red channel is all zero and the image is smaller than a whole slide."""
    if max(rgb_u8.shape[:2]) >= cfg.fluorescence_max_side:
        return False
    return not rgb_u8[..., 0].any()


def read_normalized(path: Path | str, max_pixels: int, cfg: InferenceConfig) -> np.ndarray:
    """Any supported file -> normalised uint8 H×W×3, exactly as `predict` prepares it (for training and tuning)."""
    return normalize(to_rgb(read_image(path, max_pixels)), cfg)
