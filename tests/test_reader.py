"""Reading every format and layout the challenge uses, and refusing every kind of bad file with InputError."""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from PIL import Image

from app.errors import InputError
from app.reader import list_inputs, read_image, skip_reason

CAP = 10_000_000
RNG = np.random.default_rng(0)


def _u8(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def _u16(*shape: int) -> np.ndarray:
    return RNG.integers(0, 65536, shape, dtype=np.uint16)


# --- listing ------------------------------------------------------------------------------------------------------


def test_list_inputs_takes_image_extensions_in_any_case_sorted(tmp_path: Path) -> None:
    for name in ["b.PNG", "a.tif", "c.TIFF", "d.jpeg", "e.JPG", "f.bmp", "notes.txt", ".hidden.png", "noext"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()
    images, skipped = list_inputs(tmp_path)
    assert [p.name for p in images] == ["a.tif", "b.PNG", "c.TIFF", "d.jpeg", "e.JPG", "f.bmp"]
    assert sorted(p.name for p in skipped) == [".hidden.png", "folder.png", "noext", "notes.txt"]
    reasons = {p.name: skip_reason(p) for p in skipped}
    assert reasons[".hidden.png"] == "hidden file"
    assert reasons["folder.png"] == "not a regular file"
    assert ".txt" in reasons["notes.txt"]


# --- formats, dtypes and layouts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, data",
    [
        ("gray8.png", _u8(20, 30)),
        ("gray16.png", _u16(20, 30)),
        ("rgb8.png", _u8(20, 30, 3)),
        ("gray8.bmp", _u8(20, 30)),
        ("rgb8.bmp", _u8(20, 30, 3)),
        ("gray8.tif", _u8(20, 30)),
        ("gray16.tiff", _u16(20, 30)),
        ("rgb16.tif", _u16(20, 30, 3)),
        ("int32.tif", RNG.integers(-1000, 1000, (20, 30)).astype(np.int32)),
        ("float32.tif", RNG.random((20, 30), dtype=np.float32)),
        ("float64.tif", RNG.random((20, 30, 3))),
    ],
)
def test_lossless_formats_read_exactly_in_source_dtype(tmp_path: Path, name: str, data: np.ndarray) -> None:
    path = tmp_path / name
    if name.endswith((".tif", ".tiff")):
        tifffile.imwrite(path, data, photometric="rgb" if data.ndim == 3 else None)
    else:
        iio.imwrite(path, data)
    image = read_image(path, CAP)
    expected = data if data.ndim == 3 else data[..., np.newaxis]
    assert image.dtype == data.dtype
    np.testing.assert_array_equal(image, expected)


def test_png_16_bit_rgb_keeps_16_bits(tmp_path: Path) -> None:
    data = _u16(20, 30, 3)
    (tmp_path / "rgb16.png").write_bytes(imagecodecs.png_encode(data))
    np.testing.assert_array_equal(read_image(tmp_path / "rgb16.png", CAP), data)


def test_jpeg_reads_as_uint8_rgb(tmp_path: Path) -> None:
    data = np.full((20, 30, 3), 128, np.uint8)
    iio.imwrite(tmp_path / "x.jpg", data)
    image = read_image(tmp_path / "x.jpg", CAP)
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    assert abs(int(image.mean()) - 128) <= 2


def test_rgba_keeps_four_channels_for_to_rgb(tmp_path: Path) -> None:
    data = _u8(20, 30, 4)
    iio.imwrite(tmp_path / "rgba.png", data)
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png", CAP), data)


def test_gray_alpha_png_drops_alpha(tmp_path: Path) -> None:
    data = _u8(20, 30, 2)
    Image.fromarray(data, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png", CAP), data[..., :1])


def test_palette_png_expands_to_rgb(tmp_path: Path) -> None:
    Image.fromarray(_u8(20, 30)).convert("P").save(tmp_path / "p.png")
    image = read_image(tmp_path / "p.png", CAP)
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8


def test_two_channel_tiff(tmp_path: Path) -> None:
    data = _u16(20, 30, 2)
    tifffile.imwrite(tmp_path / "two.tif", data)
    np.testing.assert_array_equal(read_image(tmp_path / "two.tif", CAP), data)


@pytest.mark.parametrize(
    "channels, photometric", [(2, "minisblack"), (3, "minisblack"), (3, "rgb"), (4, "rgb")]
)
def test_channel_first_tiff_is_moved_to_channel_last(tmp_path: Path, channels: int, photometric: str) -> None:
    """Planar RGB(A) in one page, or one page per channel (tifffile's future default), read the same."""
    data = _u16(channels, 20, 30)
    tifffile.imwrite(tmp_path / "chw.tif", data, photometric=photometric, planarconfig="separate")
    np.testing.assert_array_equal(read_image(tmp_path / "chw.tif", CAP), np.moveaxis(data, 0, -1))


def test_multi_page_tiff_gives_the_first_image(tmp_path: Path) -> None:
    first, second = _u16(20, 30), _u8(40, 10, 3)
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tif:
        tif.write(first)
        tif.write(second)
    np.testing.assert_array_equal(read_image(tmp_path / "pages.tif", CAP), first[..., np.newaxis])


def test_stack_of_pages_gives_the_first_page(tmp_path: Path) -> None:
    stack = _u8(6, 20, 30)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    np.testing.assert_array_equal(read_image(tmp_path / "stack.tif", CAP), stack[0][..., np.newaxis])


def test_singleton_axes_are_dropped(tmp_path: Path) -> None:
    data = _u8(1, 20, 30, 1)
    tifffile.imwrite(tmp_path / "s.tif", data)
    np.testing.assert_array_equal(read_image(tmp_path / "s.tif", CAP), data[0])


def test_mislabelled_extension_is_read_by_content(tmp_path: Path) -> None:
    data = _u8(20, 30)
    iio.imwrite(tmp_path / "really_png.tif", data, extension=".png")
    np.testing.assert_array_equal(read_image(tmp_path / "really_png.tif", CAP), data[..., np.newaxis])


# --- bad files ------------------------------------------------------------------------------------------------------


def _truncated(tmp_path: Path, name: str, data: np.ndarray) -> Path:
    good = tmp_path / ("good_" + name)
    if name.endswith(".tif"):
        tifffile.imwrite(good, data, compression="zlib", photometric="rgb")
    else:
        iio.imwrite(good, data)
    raw = good.read_bytes()
    bad = tmp_path / name
    bad.write_bytes(raw[: len(raw) // 2])
    return bad


@pytest.mark.parametrize("name", ["cut.png", "cut.tif", "cut.jpg", "cut.bmp"])
def test_truncated_files_are_input_errors(tmp_path: Path, name: str) -> None:
    bad = _truncated(tmp_path, name, _u8(64, 64, 3))
    with pytest.raises(InputError, match="corrupt or truncated") as info:
        read_image(bad, CAP)
    assert str(info.value).startswith(f"{name}: ")


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"^empty\.png: empty file"):
        read_image(tmp_path / "empty.png", CAP)


def test_random_bytes_are_refused_by_header(tmp_path: Path) -> None:
    (tmp_path / "noise.tif").write_bytes(RNG.integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(InputError, match="unrecognised header"):
        read_image(tmp_path / "noise.tif", CAP)


def test_corrupt_data_behind_a_valid_header(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    iio.imwrite(good, _u8(64, 64))
    raw = bytearray(good.read_bytes())
    raw[40:] = bytes(len(raw) - 40)  # keep signature and IHDR, zero the compressed stream
    (tmp_path / "bad.png").write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"^bad\.png: corrupt or truncated"):
        read_image(tmp_path / "bad.png", CAP)


@pytest.mark.parametrize(
    "name, data, kwargs, reason",
    [
        ("line.tif", np.zeros((1, 50), np.uint8), {}, "not a 2-D image"),
        ("six.tif", np.zeros((20, 30, 6), np.uint8), {"photometric": "minisblack", "planarconfig": "contig"},
         "more than 4 channels"),
        ("five.tif", np.zeros((20, 30, 5), np.uint8), {}, "more than 4 channels"),
        ("volume.tif", np.zeros((5, 20, 30), np.uint8), {"imagej": True, "metadata": {"axes": "ZYX"}}, "volume"),
        ("channels.tif", np.zeros((6, 20, 30), np.uint8), {"imagej": True, "metadata": {"axes": "CYX"}},
         "more than 4 channels"),
        ("complex.tif", np.zeros((20, 30), np.complex64), {}, "unsupported pixel type"),
    ],
)
def test_unsupported_shapes_and_types(tmp_path: Path, name: str, data: np.ndarray, kwargs: dict, reason: str) -> None:
    tifffile.imwrite(tmp_path / name, data, **kwargs)
    with pytest.raises(InputError, match=reason) as info:
        read_image(tmp_path / name, CAP)
    assert str(info.value).startswith(f"{name}: ")


@pytest.mark.parametrize("name", ["big.png", "big.tif", "big.bmp", "big.jpg"])
def test_pixel_cap_counts_height_times_width(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    data = _u8(60, 50, 3)
    if name.endswith(".tif"):
        tifffile.imwrite(path, data, photometric="rgb")
    else:
        iio.imwrite(path, data)
    assert read_image(path, 3000).shape == (60, 50, 3)
    with pytest.raises(InputError, match=r"too many pixels: 60×50 = 3,000 > cap 2,999"):
        read_image(path, 2999)


@pytest.mark.parametrize("name", ["head.png", "head.bmp"])
def test_pixel_cap_is_checked_from_the_header_before_decoding(tmp_path: Path, name: str) -> None:
    full = tmp_path / ("full_" + name)
    iio.imwrite(full, _u8(60, 50, 3))
    (tmp_path / name).write_bytes(full.read_bytes()[:64])  # header only: decoding would fail as truncated
    with pytest.raises(InputError, match="too many pixels"):
        read_image(tmp_path / name, 2999)


def test_huge_declared_tiff_is_refused_without_decoding(tmp_path: Path) -> None:
    path = tmp_path / "huge.tif"
    with tifffile.TiffWriter(path) as tif:  # 40,000 × 40,000 declared; the data area is left sparse
        tif.write(shape=(40_000, 40_000), dtype=np.uint8)
    with pytest.raises(InputError, match="too many pixels: 40000×40000"):
        read_image(path, 150_000_000)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot open"):
        read_image(tmp_path / "gone.png", CAP)


def test_truncated_uncompressed_tiff(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "raw.tif", _u8(64, 64, 3), photometric="rgb")
    raw = (tmp_path / "raw.tif").read_bytes()
    (tmp_path / "cut_raw.tif").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"^cut_raw\.tif: corrupt or truncated"):
        read_image(tmp_path / "cut_raw.tif", CAP)


def test_the_reader_applies_its_own_pixel_cap_and_leaves_pillow_as_it_found_it(tmp_path: Path) -> None:
    path = tmp_path / "wide.jpg"
    Image.fromarray(_u8(64, 64, 3)).save(path)
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 100  # Pillow alone would refuse 4,096 px as a decompression bomb
    try:
        assert read_image(path, CAP).shape == (64, 64, 3)
        assert Image.MAX_IMAGE_PIXELS == 100
        with pytest.raises(InputError, match="wide.jpg"):
            read_image(path, 1000)  # the reader's own cap still holds
    finally:
        Image.MAX_IMAGE_PIXELS = before


def test_input_files_and_labelled_pairs_follow_the_listing_rule(tmp_path: Path) -> None:
    from app.reader import input_files, labelled_pairs

    (tmp_path / "images" / "deeper").mkdir(parents=True)
    (tmp_path / "labels").mkdir()
    for name in ("b.PNG", "a.tif", ".hidden.png", "notes.txt", "deeper/c.png"):
        (tmp_path / "images" / name).write_bytes(b"x")
    (tmp_path / "labels" / "a_label.tiff").write_bytes(b"x")
    assert [p.name for p in input_files(tmp_path / "images")] == ["a.tif", "b.PNG"]
    assert [p.name for p in input_files(tmp_path / "images", recursive=True)] == ["a.tif", "b.PNG", "c.png"]
    pairs, unlabelled = labelled_pairs(tmp_path / "images", tmp_path / "labels")
    assert [(image.name, label.name) for image, label in pairs] == [("a.tif", "a_label.tiff")]
    assert [p.name for p in unlabelled] == ["b.PNG"]
