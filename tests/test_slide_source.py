"""Lazy reading of tiled slides: regions, levels and the overview equal what tifffile reads eagerly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from app.errors import InputError
from app.slides.source import Slide, tiled_tiff_shape
from tests.slide_data import write_tiled


@pytest.fixture(scope="module")
def rgb(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    image = np.random.default_rng(0).integers(0, 256, (700, 530, 3), dtype=np.uint8)
    return write_tiled(tmp_path_factory.mktemp("rgb") / "rgb.tif", image, levels=2), image


def test_lazy_regions_equal_the_eager_read(rgb: tuple[Path, np.ndarray]) -> None:
    path, image = rgb
    assert np.array_equal(tifffile.imread(path), image)
    with Slide(path) as slide:
        assert (slide.height, slide.width, slide.channels, slide.dtype) == (700, 530, 3, np.uint8)
        assert slide.tile_shape == (64, 64)
        assert np.array_equal(slide.read(0, 700, 0, 530), image)
        assert np.array_equal(slide.read(63, 129, 1, 400), image[63:129, 1:400])  # across tile borders
        assert np.array_equal(slide.read(0, 700, 0, 530, step=7), image[::7, ::7])


def test_pyramid_levels_and_the_overview(rgb: tuple[Path, np.ndarray]) -> None:
    path, image = rgb
    with Slide(path) as slide:
        assert slide.level_shapes == [(700, 530), (350, 265), (175, 133)]
        assert np.array_equal(slide.read(0, 350, 0, 265, level=1), image[::2, ::2])
        # The coarsest level with at least the pixels asked for, decimated down to about that many.
        small = slide.overview(20_000)
        assert small.level == 2 and small.step == 2 and small.pixels.shape == (88, 67, 3)
        assert small.factor == pytest.approx((8.0, 530 / 133 * 2))
        assert np.array_equal(small.pixels, image[::4, ::4][::2, ::2])
        whole = slide.overview(10**9)  # more than the slide has: full resolution, every pixel
        assert whole.level == 0 and whole.step == 1 and np.array_equal(whole.pixels, image)


@pytest.mark.parametrize("layout", ["grey16", "pages", "planar", "ome"])
def test_grey_and_channel_first_slides_read_as_hwc(tmp_path: Path, layout: str) -> None:
    rng = np.random.default_rng(1)
    options: dict = {"photometric": "minisblack"}
    if layout == "grey16":
        data = rng.integers(0, 65536, (300, 200), dtype=np.uint16)
        expected = data[..., None]
    else:
        data = rng.integers(0, 256, (2, 300, 200), dtype=np.uint8)
        expected = np.moveaxis(data, 0, -1)
        options.update({"planar": {"planarconfig": "separate"}, "ome": {"ome": True, "metadata": {"axes": "CYX"}},
                        "pages": {}}[layout])
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, data, tile=(64, 64), **options)
    assert tiled_tiff_shape(path) == (300, 200)
    with Slide(path) as slide:
        assert slide.channels == expected.shape[2] and slide.dtype == expected.dtype
        assert np.array_equal(slide.read(10, 290, 5, 199), expected[10:290, 5:199])


def test_untiled_and_other_files_are_not_slides(tmp_path: Path) -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    tifffile.imwrite(tmp_path / "strips.tif", image, photometric="rgb")
    (tmp_path / "text.tif").write_text("not a tiff")
    (tmp_path / "empty.tif").write_bytes(b"")
    for name in ("strips.tif", "text.tif", "empty.tif", "missing.tif"):
        assert tiled_tiff_shape(tmp_path / name) is None


def test_a_damaged_tile_is_one_line_naming_the_file(tmp_path: Path) -> None:
    image = np.random.default_rng(2).integers(0, 256, (256, 256), dtype=np.uint8)
    path = tmp_path / "broken.tif"
    tifffile.imwrite(path, image, tile=(64, 64), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[5]
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * 64)
    with Slide(path) as slide:
        assert np.array_equal(slide.read(0, 64, 0, 64)[..., 0], image[:64, :64])  # other tiles still read
        with pytest.raises(InputError, match=r"^broken.tif: corrupt or truncated tile in rows 0-128"):
            slide.read(0, 128, 0, 128)
    with pytest.raises(InputError, match=r"^text.tif: cannot open as a TIFF"):
        (tmp_path / "text.tif").write_text("not a tiff")
        Slide(tmp_path / "text.tif")
