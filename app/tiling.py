"""Window placement for sliding-window inference.

Windows start every `stride` pixels and the last one sits flush with the image edge, so a large image is covered
without padding and every window has the model's fixed input shape. Images smaller than a window get a single
window at 0 (the caller pads them to the window size).
"""

from __future__ import annotations

import numpy as np


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
