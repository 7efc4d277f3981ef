"""The streamed label file: global ids in tile order, pasted as the in-memory whole-slide path pastes, written
as a tiled (pyramidal) BigTIFF that tifffile reads tile by tile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from app.segment import paste_owned
from app.slides.record import save_part
from app.slides.store import Band, label_bands, offsets, write_streamed_labels
from app.tiling import tile_grid


def test_offsets_count_the_cells_of_the_tiles_before() -> None:
    assert offsets({1: 3, 4: 2, 2: 0}, 6).tolist() == [0, 0, 3, 3, 3, 5]


def fake_parts(folder: Path, height: int, width: int, seed: int = 0):
    """Tiles of 100 with a 30 px halo, each owning a few random rectangles over its crop (so neighbours' cells
    overlap); returns (tiles, {index: cells}, the label map the in-memory paste gives)."""
    rng = np.random.default_rng(seed)
    tiles = tile_grid(height, width, 100, 30)
    reference = np.zeros((height, width), np.uint32)
    cells: dict[int, int] = {}
    offset = 0
    for index, tile in enumerate(tiles):
        if index % 3 == 2:
            continue  # no cells here: no part stored
        h, w = tile.crop_shape
        labels = np.zeros((h, w), np.int32)
        count = int(rng.integers(1, 5))
        for n in range(1, count + 1):
            y, x = int(rng.integers(0, h - 20)), int(rng.integers(0, w - 20))
            labels[y : y + int(rng.integers(5, 20)), x : x + int(rng.integers(5, 20))] = n
        owned = np.unique(labels)[1:]
        offset = paste_owned(reference, labels, owned, tile, offset)
        lut = np.zeros(count + 1, np.uint16)
        lut[owned] = np.arange(1, owned.size + 1)
        save_part(folder, index, (tile.crop[0], tile.crop[2]), lut[labels])
        cells[index] = int(owned.size)
    return tiles, cells, reference


def test_bands_paste_in_tile_order_like_the_in_memory_path(tmp_path: Path) -> None:
    tiles, cells, reference = fake_parts(tmp_path, 330, 270)
    bands = list(label_bands(tiles, cells, tmp_path, 270, write_tile=32))
    assert [band.y0 for band in bands] == [0, 100, 200, 300]
    assert np.array_equal(np.concatenate([band.array(270, 32) for band in bands]), reference)
    for band in bands:  # only the write-tile columns some part reached are held
        held = np.zeros(9, bool)
        held[list(band.columns)] = True
        blocks = band.array(270, 32)
        assert all(not blocks[:, c * 32 : (c + 1) * 32].any() for c in np.flatnonzero(~held))


def test_written_file_is_a_tiled_bigtiff_with_levels(tmp_path: Path) -> None:
    tiles, cells, reference = fake_parts(tmp_path / "parts", 330, 270)
    out = tmp_path / "s_label.tiff"
    total = sum(cells.values())
    write_streamed_labels(out, 330, 270, lambda: label_bands(tiles, cells, tmp_path / "parts", 270, 32), total, 32,
                          levels=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts", "s_label.tiff"]  # nothing else left behind
    with tifffile.TiffFile(out) as tif:
        assert tif.is_bigtiff
        page = tif.pages[0]
        assert page.is_tiled and (page.tilelength, page.tilewidth) == (32, 32) and page.dtype == np.uint16
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert np.array_equal(page.asarray(), reference)
        levels = tif.series[0].levels
        assert [level.shape for level in levels] == [(330, 270), (165, 135), (83, 68)]
        assert np.array_equal(levels[1].asarray(), reference[::2, ::2])
        assert np.array_equal(levels[2].asarray(), reference[::4, ::4])
        segments = list(page.segments())  # tile by tile, as a viewer reads it
        assert len(segments) == 11 * 9
    many = tmp_path / "many_label.tiff"
    write_streamed_labels(many, 330, 270, lambda: label_bands(tiles, cells, tmp_path / "parts", 270, 32), 70_000, 32)
    assert tifffile.imread(many).dtype == np.uint32  # above 65,535 cells, as app.writer.write_labels


def test_an_empty_slide_is_one_blank_tile_repeated(tmp_path: Path) -> None:
    tiles = tile_grid(2000, 3000, 500, 50)
    out = write_streamed_labels(tmp_path / "e_label.tiff", 2000, 3000,
                                lambda: label_bands(tiles, {}, tmp_path / "none", 3000, 256), 0, 256)
    with tifffile.TiffFile(out) as tif:
        page = tif.pages[0]
        assert len(set(page.databytecounts)) == 1 and not page.asarray().any()
    assert out.stat().st_size < 20_000


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    def broken():
        yield Band(0, 10, {0: np.ones((10, 32), np.uint32)})
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_streamed_labels(tmp_path / "x_label.tiff", 20, 50, broken, 3, 32)
    assert list(tmp_path.iterdir()) == []
