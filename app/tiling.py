"""Where the model looks: window placement for sliding-window inference, whole-slide tiles, scaled sizes.

A scaled image whose sides are at most `cfg.one_pass_max_side` runs through the model as one input, zero-padded
to the network's size multiple (`one_pass_shape`): the network is fully convolutional, so the whole image gives
every pixel its full context, leaves no seams and costs only its own pixels. A larger one takes overlapping
windows: they start every `stride` pixels and the last one sits flush with the image edge, so it is covered
without padding and every window has the model's input shape; a side shorter than a window gets one window at 0
(the caller pads it to the window size). Images above `cfg.tile_threshold_pixels` are cut into
cores of `cfg.tile_size` pixels with a halo of `cfg.tile_halo` (`app.segment`). The planner counts windows with
the same functions the segmenter runs, so its estimate cannot drift from what runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.config import CONTRACT, InferenceConfig


def window_starts(length: int, window: int, stride: int) -> np.ndarray:
    """Start offsets along one axis: 0, stride, 2*stride, ... plus `length - window`, sorted, no duplicates."""
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be positive, got window={window}, stride={stride}")
    if length <= window:
        return np.zeros(1, dtype=np.int64)
    last = length - window
    starts = np.arange(0, last + 1, stride, dtype=np.int64)
    if starts[-1] != last:
        starts = np.append(starts, last)
    return starts


def window_grid(h: int, w: int, window: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of every window covering an h x w image, row by row."""
    ys = window_starts(h, window, stride)
    xs = window_starts(w, window, stride)
    return [(int(y), int(x)) for y in ys for x in xs]


def one_pass_shape(h: int, w: int, max_side: int, multiple: int = CONTRACT.size_multiple) -> tuple[int, int] | None:
    """The padded shape at which an h x w scaled image runs through the model as one input, or None when a side
    exceeds `max_side` (0: never) and it takes windows."""
    if not 0 < max(h, w) <= max_side:
        return None
    return -(-h // multiple) * multiple, -(-w // multiple) * multiple


def model_load(h: int, w: int, window: int, stride: int, one_pass_max: int = 0) -> tuple[float, int]:
    """(model work in windows, pixels the model sees) for an h x w scaled image: one input counts its padded
    pixels as a share of a window (a convolutional network's time follows its pixels), windows count one each;
    the pixels are the padded input, or the image padded to at least a window."""
    shape = one_pass_shape(h, w, one_pass_max)
    if shape is not None:
        return shape[0] * shape[1] / window**2, shape[0] * shape[1]
    return len(window_grid(h, w, window, stride)), max(h, window) * max(w, window)


def scaled_size(length: int, scale: float) -> int:
    """Side length of an image resized by `scale` (at least one pixel)."""
    return max(1, int(round(length * scale)))


@dataclass(frozen=True)
class Tile:
    """A core (owned pixels) and its haloed crop, as (y0, y1, x0, x1) boxes in global coordinates."""

    core: tuple[int, int, int, int]
    crop: tuple[int, int, int, int]

    @property
    def crop_shape(self) -> tuple[int, int]:
        y0, y1, x0, x1 = self.crop
        return y1 - y0, x1 - x0


def tile_grid(h: int, w: int, size: int, halo: int) -> list[Tile]:
    """Cores of `size` x `size` covering an h x w image in raster order, each with a `halo` clipped to the image."""
    if size <= 0 or halo < 0:
        raise ValueError(f"tile size must be positive and halo non-negative, got size={size}, halo={halo}")
    tiles = []
    for y0 in range(0, h, size):
        for x0 in range(0, w, size):
            y1, x1 = min(h, y0 + size), min(w, x0 + size)
            crop = (max(0, y0 - halo), min(h, y1 + halo), max(0, x0 - halo), min(w, x1 + halo))
            tiles.append(Tile((y0, y1, x0, x1), crop))
    return tiles


def is_whole_slide(h: int, w: int, cfg: InferenceConfig) -> bool:
    """Whether an image takes the whole-slide path (haloed tiles) rather than going through whole."""
    return h * w > cfg.tile_threshold_pixels


def crop_shapes(h: int, w: int, cfg: InferenceConfig) -> list[tuple[int, int]]:
    """Shapes of the arrays the model sees: the whole image, or each haloed tile on the whole-slide path."""
    if not is_whole_slide(h, w, cfg):
        return [(h, w)]
    return [tile.crop_shape for tile in tile_grid(h, w, cfg.tile_size, cfg.tile_halo)]
