"""A streamed slide's label image, written as a tiled, compressed BigTIFF one band of tiles at a time.

Global ids: tile i's owned cells 1..k become offset_i + 1 .. offset_i + k, where offset_i counts the cells of the
tiles before it in raster order; so ids run 1..N, in tile order, whatever order the tiles were segmented in.
Bands: the label image is put together one row of cores at a time from the stored parts of the tiles whose
crops reach into it, pasted in tile order, a pixel already taken by an earlier tile's cell staying with it. That
is `app.segment.paste_owned`'s rule, so a slide streamed with the same tiles gives the same labels as the
in-memory whole-slide path. Only the band, kept per write-tile column and only where cells reach (glass costs no
memory, however wide the slide), and one part at a time are in memory.

The bands are cut into `cfg.slide_write_tile` squares, zlib-compressed here and handed to tifffile as encoded
tiles; a tile no part reached is the one compressed blank tile, so glass costs neither memory nor time.
Optional pyramid levels (nearest-neighbour, each half the previous) follow as SubIFDs, which QuPath, napari and
tifffile read as one pyramidal image; each level streams the bands again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from app.slides.record import load_part
from app.tiling import Tile
from app.writer import label_dtype, write_atomic

ZLIB_LEVEL = 6  # as tifffile's own zlib default


def offsets(cells: Mapping[int, int], count: int) -> np.ndarray:
    """offset_i of every tile index below `count`: the cells of the tiles before it."""
    per_tile = np.zeros(count, np.int64)
    for index, n in cells.items():
        per_tile[index] = n
    return np.concatenate([[0], np.cumsum(per_tile)[:-1]]).astype(np.int64)


def _core_rows(tiles: Sequence[Tile]) -> list[tuple[int, int, int, int]]:
    """(y0, y1, first tile index, last tile index + 1) of every row of cores (tiles are in raster order)."""
    rows: list[tuple[int, int, int, int]] = []
    for index, tile in enumerate(tiles):
        y0, y1 = tile.core[0], tile.core[1]
        if rows and rows[-1][0] == y0:
            rows[-1] = (y0, y1, rows[-1][2], index + 1)
        else:
            rows.append((y0, y1, index, index + 1))
    return rows


@dataclass
class Band:
    """One row of cores of the label image: its first row, its height and, per `write_tile`-wide column of the
    image, the uint32 labels of that column (only the columns some tile's cells reach are there: glass costs no
    memory, whatever the slide's width)."""

    y0: int
    height: int
    columns: dict[int, np.ndarray]

    def array(self, width: int, write_tile: int) -> np.ndarray:
        """The band as one height × width array (for tests and small slides)."""
        out = np.zeros((self.height, math.ceil(width / write_tile) * write_tile), np.uint32)
        for c, block in self.columns.items():
            out[:, c * write_tile : (c + 1) * write_tile] = block
        return out[:, :width]


def label_bands(tiles: Sequence[Tile], cells: Mapping[int, int], parts: Path, width: int, write_tile: int
                ) -> Iterator[Band]:
    """The label image one row of cores at a time, global ids pasted in tile order (module docstring)."""
    starts = offsets(cells, len(tiles))
    rows = _core_rows(tiles)
    for y0, y1, _, _ in rows:
        band = Band(y0, y1 - y0, {})
        for _, _, first, last in rows:
            if tiles[first].crop[1] <= y0 or tiles[first].crop[0] >= y1:
                continue  # this row's crops do not reach the band
            for index in range(first, last):
                if cells.get(index):
                    (py, px), part = load_part(parts, index)
                    top, bottom = max(y0, py), min(y1, py + part.shape[0])
                    if top < bottom:
                        paste(band, part[top - py : bottom - py], top, px, int(starts[index]), write_tile)
        yield band


def paste(band: Band, piece: np.ndarray, top: int, left: int, offset: int, write_tile: int) -> None:
    """Paste a stored tile's rows (ids 1..k become offset + 1..k) at global (top, left): only where the band is
    still background (`app.segment.paste_owned`'s rule)."""
    fresh = np.where(piece > 0, piece.astype(np.uint32) + np.uint32(offset), np.uint32(0))
    rows = slice(top - band.y0, top - band.y0 + piece.shape[0])
    for c in range(left // write_tile, (left + piece.shape[1] - 1) // write_tile + 1):
        a, b = max(left, c * write_tile), min(left + piece.shape[1], (c + 1) * write_tile)
        if c not in band.columns:
            band.columns[c] = np.zeros((band.height, write_tile), np.uint32)
        region = band.columns[c][rows, a - c * write_tile : b - c * write_tile]
        source = fresh[:, a - left : b - left]
        write = (source != 0) & (region == 0)
        region[write] = source[write]


def _encode(tile: np.ndarray) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.zlib_encode(np.ascontiguousarray(tile).tobytes(), level=ZLIB_LEVEL))


def level_tiles(bands: Iterator[Band], height: int, width: int, factor: int, write_tile: int, dtype: np.dtype
                ) -> Iterator[bytes]:
    """Encoded write_tile × write_tile tiles, row by row, of the label image subsampled by `factor` (every
    factor-th row and column, from the first; `write_tile` a multiple of it): what tifffile writes for one level.
    A level tile gathers `factor` image columns, each narrowed to write_tile / factor."""
    columns = math.ceil(math.ceil(width / factor) / write_tile)
    narrow = write_tile // factor
    blank = _encode(np.zeros((write_tile, write_tile), dtype))
    strip: dict[int, np.ndarray] = {}  # level column -> its tile being filled
    filled = emitted = 0

    def flush() -> Iterator[bytes]:
        for c in range(columns):
            tile = strip.get(c)
            yield _encode(tile) if tile is not None and tile.any() else blank
        strip.clear()

    for band in bands:
        start = (-band.y0) % factor
        count = len(range(start, band.height, factor))
        at = 0
        while at < count:
            n = min(write_tile - filled, count - at)
            rows = slice(start + at * factor, start + (at + n - 1) * factor + 1, factor)
            for c, block in band.columns.items():
                level_c, k = divmod(c, factor)
                tile = strip.setdefault(level_c, np.zeros((write_tile, write_tile), dtype))
                tile[filled : filled + n, k * narrow : (k + 1) * narrow] = block[rows, ::factor]
            filled += n
            at += n
            if filled == write_tile:
                yield from flush()
                filled = 0
                emitted += write_tile
    if emitted < math.ceil(height / factor):
        yield from flush()


def write_streamed_labels(
    path: Path,
    height: int,
    width: int,
    bands: Callable[[], Iterator[Band]],
    cells: int,
    write_tile: int,
    levels: int = 0,
) -> Path:
    """Write the label image from `bands()` (called once per level) as a tiled zlib BigTIFF, uint16 or uint32 as
    `app.writer.write_labels` chooses, with `levels` sub-resolution levels; atomically (`write_atomic`)."""
    import tifffile

    dtype = label_dtype(cells)

    def write(handle: BinaryIO) -> None:
        with tifffile.TiffWriter(handle, bigtiff=True) as tiff:
            for level in range(levels + 1):
                factor = 2**level
                shape = (math.ceil(height / factor), math.ceil(width / factor))
                tiff.write(
                    level_tiles(bands(), height, width, factor, write_tile, dtype),
                    shape=shape, dtype=dtype, tile=(write_tile, write_tile), compression="zlib",
                    photometric="minisblack", metadata=None, subifds=levels if level == 0 else None,
                    subfiletype=1 if level else 0,
                )

    return write_atomic(path, write)


__all__ = ["Band", "label_bands", "level_tiles", "offsets", "paste", "write_streamed_labels"]
