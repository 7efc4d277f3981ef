"""Lazy reading of tiled slides: a tiled TIFF, BigTIFF or OME-TIFF (SVS-style pyramids included) opened through
tifffile's zarr view (`TiffFile.aszarr`) and read region by region, so only the pixels asked for are decoded.

A slide is the first series of the file. Its full-resolution level is read for the tiles being segmented; its
pyramid levels, when it has them, give a cheap overview (tissue, normalisation statistics). Without a suitable
level the overview is a decimated read of a finer one: every k-th row and column, decoded chunk by chunk.
Regions come back as H×W×C arrays in the file's own dtype, as `app.reader.read_image` returns whole images.
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from app.config import InferenceConfig
from app.errors import InputError
from app.reader import MAX_CHANNELS

# Where a series keeps its samples, by tifffile's axes code (singleton axes already squeezed): interleaved
# (last axis), planar, or one page per channel (first axis: C in OME-TIFF, Q for tifffile's own page stacks).
CHANNEL_AXIS: dict[str, int | None] = {"YX": None, "YXS": 2, "YXC": 2, "SYX": 0, "CYX": 0, "QYX": 0}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


@dataclass(frozen=True)
class Overview:
    """A small copy of a slide (H×W×C, the slide's dtype) and how many full-resolution pixels one of its pixels
    spans along each axis (`factor`)."""

    pixels: np.ndarray
    factor: tuple[float, float]
    level: int
    step: int


def tiled_tiff_shape(path: Path | str) -> tuple[int, int] | None:
    """(height, width) of a file whose first series is stored in tiles, else None (not a TIFF, untiled, or
    unreadable: those are left to `app.reader.read_image` and its error lines)."""
    import tifffile

    path = Path(path)
    try:
        with open(path, "rb") as handle:
            if not handle.read(4).startswith(_TIFF_MAGIC):
                return None
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            if not series.keyframe.is_tiled or series.axes not in CHANNEL_AXIS:
                return None
            return _height_width(tuple(int(d) for d in series.shape), series.axes)
    except Exception:  # noqa: BLE001 - any unreadable file is not a slide; the ordinary reader reports it
        return None


def is_slide(path: Path | str, cfg: InferenceConfig) -> bool:
    """Whether an input is streamed (`app.slides.run`): a tiled TIFF with more than `cfg.slide_threshold_pixels`
    pixels. Everything else is read whole by `app.reader`, as before."""
    shape = tiled_tiff_shape(path)
    return shape is not None and shape[0] * shape[1] > cfg.slide_threshold_pixels


def _height_width(shape: tuple[int, ...], axes: str) -> tuple[int, int]:
    y, x = axes.index("Y"), axes.index("X")
    return shape[y], shape[x]


class Slide:
    """An open tiled slide, read lazily; use as a context manager (or call `close`).

    Raises `InputError` naming the file when it is not a tiled 2-D image with at most four channels.
    """

    def __init__(self, path: Path | str) -> None:
        import tifffile

        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
        except Exception as exc:  # re-raised as one line naming the file, as the reader reports bad inputs
            raise InputError(self.path, f"cannot open as a TIFF ({type(exc).__name__}: {exc})") from exc
        try:
            series = self._tif.series[0]
            self.axes = str(series.axes)
            if self.axes not in CHANNEL_AXIS:
                raise InputError(self.path, f"unsupported slide axes {self.axes} (a 2-D image with up to "
                                            f"{MAX_CHANNELS} channels is needed)")
            self._channel_axis = CHANNEL_AXIS[self.axes]
            shape = tuple(int(d) for d in series.shape)
            self.height, self.width = _height_width(shape, self.axes)
            self.channels = 1 if self._channel_axis is None else shape[self._channel_axis]
            if not 1 <= self.channels <= MAX_CHANNELS:
                raise InputError(self.path, f"unsupported slide shape {shape}: more than {MAX_CHANNELS} channels")
            self.dtype = np.dtype(series.dtype)
            if self.dtype.kind not in "uif":
                raise InputError(self.path, f"unsupported pixel type {self.dtype}")
            self._shapes: list[tuple[int, int]] = []
            for level in series.levels:
                if str(level.axes) != self.axes:
                    break
                self._shapes.append(_height_width(tuple(int(d) for d in level.shape), self.axes))
            self.tile_shape: tuple[int, int] = (int(series.keyframe.tilelength), int(series.keyframe.tilewidth))
            self._levels: dict[int, Any] = {}  # zarr views, made when a level is first read
            self._lock = threading.Lock()
        except BaseException:
            self._tif.close()
            raise

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._tif.close()

    @property
    def level_shapes(self) -> list[tuple[int, int]]:
        """(height, width) of every level, full resolution first."""
        return list(self._shapes)

    def _level(self, level: int) -> Any:
        """The zarr view of a level (tifffile's `aszarr`), made once."""
        with self._lock:
            if level not in self._levels:
                import zarr

                self._levels[level] = zarr.open_array(self._tif.aszarr(series=0, level=level), mode="r")
            return self._levels[level]

    def read(self, y0: int, y1: int, x0: int, x1: int, level: int = 0, step: int = 1) -> np.ndarray:
        """Rows y0:y1:step and columns x0:x1:step of a level as H×W×C (the file's dtype); only the chunks they
        touch are decoded. A damaged chunk becomes `InputError` naming the file and the region."""
        rows, cols = slice(y0, y1, step), slice(x0, x1, step)
        index: tuple[slice, ...]
        if self._channel_axis is None:
            index = (rows, cols)
        elif self._channel_axis == 0:
            index = (slice(None), rows, cols)
        else:
            index = (rows, cols, slice(None))
        try:
            region = np.asarray(self._level(level)[index])
        except Exception as exc:  # re-raised: a decoder failure on this file becomes one line for the user
            raise InputError(self.path, f"corrupt or truncated tile in rows {y0}-{y1}, columns {x0}-{x1} "
                                        f"({type(exc).__name__}: {exc})") from exc
        if self._channel_axis is None:
            return region[..., np.newaxis]
        if self._channel_axis == 0:
            return np.moveaxis(region, 0, -1)
        return region

    def overview(self, max_pixels: int) -> Overview:
        """A copy of at most about `max_pixels` pixels: the coarsest pyramid level that still has that many (or the
        full resolution), decimated by a regular step when it has more."""
        shapes = self.level_shapes
        level = 0
        for index, (h, w) in enumerate(shapes):
            if h * w >= max_pixels:
                level = index
        h, w = shapes[level]
        step = max(1, math.ceil(math.sqrt(h * w / max(1, max_pixels))))
        pixels = self.read(0, h, 0, w, level=level, step=step)
        factor = (self.height / h * step, self.width / w * step)
        return Overview(pixels, factor, level, step)


_SHARED: OrderedDict[tuple[str, int, int], Slide] = OrderedDict()
_SHARED_LOCK = threading.Lock()
SHARED_SLIDES = 2  # slides a process keeps open for its tile tasks


def shared_slide(path: Path | str) -> Slide:
    """An open `Slide` of `path` that the tile tasks of this process share (reads are safe from several
    threads: tifffile locks the file for each chunk). Opening a gigapixel file parses its tile tables and builds
    its zarr view, and what a closed view leaves behind waits for Python's cycle collector: once per process
    rather than once per tile. The file's size and modification time are part of the key, so a changed file is
    opened again; the least recently used of more than `SHARED_SLIDES` is closed."""
    stat = os.stat(path)
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _SHARED_LOCK:
        if key in _SHARED:
            _SHARED.move_to_end(key)
            return _SHARED[key]
        slide = _SHARED[key] = Slide(path)
        while len(_SHARED) > SHARED_SLIDES:
            _SHARED.popitem(last=False)[1].close()
        return slide


def close_shared() -> None:
    """Close the slides this process shares (the caller's tiles are done)."""
    with _SHARED_LOCK:
        for slide in _SHARED.values():
            slide.close()
        _SHARED.clear()


__all__ = ["CHANNEL_AXIS", "Overview", "Slide", "close_shared", "is_slide", "shared_slide", "tiled_tiff_shape"]
