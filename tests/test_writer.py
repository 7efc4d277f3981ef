"""Output names, label dtypes and atomic writes that leave nothing behind on failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from app.writer import label_dtype, output_name, write_labels, write_text


@pytest.mark.parametrize(
    "name, expected",
    [
        ("cell_00001.tiff", "cell_00001_label.tiff"),
        ("OpenTest_001.png", "OpenTest_001_label.tiff"),
        ("a.b.c.tif", "a_label.tiff"),
        ("x.JPG", "x_label.tiff"),
        ("noext", "noext_label.tiff"),
    ],
)
def test_output_name_cuts_at_the_first_dot(name: str, expected: str) -> None:
    assert output_name(Path("some/folder") / name) == expected


def test_names_that_collide() -> None:
    assert output_name("a.png") == output_name("a.tif") == output_name("a.v2.bmp")


def test_uint16_labels_round_trip_zlib(tmp_path: Path) -> None:
    labels = np.zeros((40, 50), np.int32)
    labels[5:10, 5:10] = 1
    labels[20:30, 20:30] = 2
    path = write_labels(tmp_path / "a_label.tiff", labels)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        data = page.asarray()
    assert data.dtype == np.uint16 and data.shape == (40, 50)
    np.testing.assert_array_equal(data, labels)
    assert [p.name for p in tmp_path.iterdir()] == ["a_label.tiff"]


def test_more_than_65535_labels_become_uint32(tmp_path: Path) -> None:
    labels = np.arange(70_000, dtype=np.int64).reshape(280, 250)
    data = tifffile.imread(write_labels(tmp_path / "many_label.tiff", labels))
    assert data.dtype == np.uint32
    np.testing.assert_array_equal(data, labels)
    assert label_dtype(65_535) == np.uint16 and label_dtype(65_536) == np.uint32


def test_overwrite_is_atomic_replacement(tmp_path: Path) -> None:
    path = tmp_path / "a_label.tiff"
    write_labels(path, np.ones((4, 4), np.int32))
    write_labels(path, np.full((4, 4), 3, np.int32))
    assert tifffile.imread(path).max() == 3
    assert [p.name for p in tmp_path.iterdir()] == ["a_label.tiff"]


def test_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "a_label.tiff"
    write_labels(path, np.ones((4, 4), np.int32))
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_labels(path, np.full((4, 4), -1, np.int32))
    with pytest.raises(ValueError):
        write_labels(path, np.zeros((4, 4, 2), np.int32))
    from app.writer import write_atomic

    def explode(handle) -> None:  # fails half-way through writing
        handle.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, explode)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a_label.tiff"]


def test_written_files_are_readable_by_others(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        path = write_labels(tmp_path / "a_label.tiff", np.ones((4, 4), np.int32))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_write_text(tmp_path: Path) -> None:
    path = write_text(tmp_path / "r.csv", "a,b\n1,2\n")
    assert path.read_text() == "a,b\n1,2\n"
