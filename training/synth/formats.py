"""Storage formats of generated images: extension, bit depth and channel layout, and the quantisation to them.

The challenge's inputs come as .png, .bmp, .jpg, .tif/.tiff, 8- or 16-bit, grayscale, RGB or channel-first
TIFF; the generator writes all of them so the app's reader and normaliser are trained and tested on each.
Quantisation also imitates cameras: 16-bit files rarely use the full range (12-bit sensors, dark offsets) and
8-bit files are often dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LAYOUTS = ("gray", "rgb", "chw")
JPEG_QUALITY = (80, 95)
# Full-scale value of 16-bit files: 12-bit to 16-bit cameras; dark offset in counts.
UINT16_FULL_SCALE = (1500.0, 60000.0)
UINT16_DARK_OFFSET = (0.0, 200.0)


@dataclass(frozen=True)
class StorageFormat:
    """How one image is stored: `layout` is gray (H×W), rgb (H×W×3) or chw (3×H×W, TIFF only)."""

    ext: str
    dtype: str = "uint8"
    layout: str = "rgb"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}")
        if self.dtype not in ("uint8", "uint16"):
            raise ValueError(f"unknown dtype {self.dtype!r}")
        if self.dtype == "uint16" and self.ext not in (".png", ".tif", ".tiff"):
            raise ValueError(f"{self.ext} cannot hold 16-bit data")
        if self.layout == "chw" and self.ext not in (".tif", ".tiff"):
            raise ValueError("channel-first layout is TIFF only")

    @property
    def label(self) -> str:
        """Short description for meta.csv, e.g. ``tif/uint16/chw``."""
        return f"{self.ext.lstrip('.')}/{self.dtype}/{self.layout}"


def pick_format(
    rng: np.random.Generator, choices: tuple[tuple[StorageFormat, float], ...], image: np.ndarray | None = None
) -> StorageFormat:
    """Draw one format from (format, weight) pairs, among those that can hold `image` when given.

    A colour image fits a grayscale format only when at most one of its channels holds signal (a
    one-channel fluorescence image may be stored as plain grayscale, as many microscopes do).
    """
    fits = [(f, w) for f, w in choices if image is None or f.layout != "gray" or _live_count(image) <= 1]
    weights = np.array([w for _, w in fits], dtype=float)
    return fits[int(rng.choice(len(fits), p=weights / weights.sum()))][0]


def quantise(
    rng: np.random.Generator, image: np.ndarray, fmt: StorageFormat, gain: tuple[float, float] = (1.0, 1.0)
) -> np.ndarray:
    """Map a float image in [0, 1] (H×W or H×W×3) to the stored dtype and layout.

    `gain` is the range of the fraction of the 8-bit scale that 1.0 maps to (dim 8-bit acquisitions).

    Exact zeros (the empty red channel of fluorescence) stay zero: the dark offset of 16-bit files is
    added only to channels that hold signal.
    """
    img = np.clip(image, 0.0, 1.0)
    if fmt.layout == "gray":
        if img.ndim == 3:
            if _live_count(img) > 1:
                raise ValueError("a colour image cannot be stored as grayscale")
            img = img.max(axis=2)
    elif img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if fmt.dtype == "uint16":
        full = rng.uniform(*UINT16_FULL_SCALE)
        offset = rng.uniform(*UINT16_DARK_OFFSET)
        live = _live_channels(img)
        out = np.where(live, offset + img * (full - offset), 0.0)
        out = np.round(out).clip(0, 65535).astype(np.uint16)
    else:
        g = rng.uniform(*gain)
        out = np.round(img * 255.0 * g).clip(0, 255).astype(np.uint8)
    if fmt.layout == "chw":
        out = np.ascontiguousarray(np.moveaxis(out, 2, 0))
    return out


def _live_channels(img: np.ndarray) -> np.ndarray:
    """Boolean mask broadcastable to `img`: False for colour channels that are exactly zero everywhere."""
    if img.ndim == 2:
        return np.ones((1, 1), dtype=bool)
    return (img.reshape(-1, img.shape[2]) != 0).any(axis=0)[None, None, :]


def _live_count(img: np.ndarray) -> int:
    """Number of channels that hold any signal (1 for a grayscale image)."""
    return int(_live_channels(img).sum()) if img.ndim == 3 else 1
