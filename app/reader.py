"""Finding input images in a folder and decoding them to H×W×C arrays in their source dtype.

The decoder is chosen from the file's first bytes, not its extension, so a mislabelled file is still read
and a non-image with an image extension is refused with a clear reason. The pixel cap is checked from the
header before any pixel is decoded, so an oversized file costs no memory. Every problem with one file is
raised as `InputError`; no other exception type escapes for a bad file.
"""

from __future__ import annotations

import logging
import struct
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import imagecodecs
import numpy as np
import tifffile
from PIL import Image

from app.config import CHALLENGE
from app.errors import InputError
from app.writer import output_name

# An array axis of at most this size is read as channels (gray+alpha, RGB, RGBA); larger ones are image sides.
MAX_CHANNELS = 4
# A TIFF page narrower than this is taken for one row of an H×W×C array with many channels that tifffile
# stored page by page, never for an image of its own.
MIN_PAGE_SIDE = 16
HEADER_BYTES = 32

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_BMP_MAGIC = b"BM"
# PNG IHDR colour types whose last channel is alpha next to a single gray channel.
_PNG_GRAY_ALPHA = 4


def is_input(path: Path) -> bool:
    """Whether a folder entry is an image candidate: a regular, non-hidden file whose extension (any case) is
    one the challenge uses."""
    return not path.name.startswith(".") and path.suffix.lower() in CHALLENGE.image_extensions and path.is_file()


def list_inputs(folder: Path | str) -> tuple[list[Path], list[Path]]:
    """Split a folder's entries into image candidates (`is_input`) and skipped entries (hidden files,
    folders, other extensions), both sorted by name."""
    images: list[Path] = []
    skipped: list[Path] = []
    for entry in sorted(Path(folder).iterdir(), key=lambda p: p.name):
        (images if is_input(entry) else skipped).append(entry)
    return images, skipped


def input_files(folder: Path | str, recursive: bool = False) -> list[Path]:
    """The image candidates of a folder (`is_input`), or of it and every folder below it, sorted by path."""
    if not recursive:
        return list_inputs(folder)[0]
    return sorted(p for p in Path(folder).rglob("*") if is_input(p))


def labelled_pairs(images: Path, labels: Path) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """(image, `labels`/<name>_label.tiff) pairs of the images in `images`, and the images without a label
    file (the challenge layout: labels named by `app.writer.output_name`)."""
    pairs: list[tuple[Path, Path]] = []
    unlabelled: list[Path] = []
    for image in list_inputs(images)[0]:
        label = labels / output_name(image)
        if label.is_file():
            pairs.append((image, label))
        else:
            unlabelled.append(image)
    return pairs, unlabelled


def skip_reason(path: Path) -> str:
    """Why `list_inputs` skipped an entry, as a short phrase for the user."""
    if path.name.startswith("."):
        return "hidden file"
    if not path.is_file():
        return "not a regular file"
    return f"extension {path.suffix or '(none)'} is not one of {' '.join(CHALLENGE.image_extensions)}"


def read_image(path: Path | str, max_pixels: int) -> np.ndarray:
    """Decode one image to H×W×C (C in 1..4) in its source dtype; raise `InputError` for any bad file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(HEADER_BYTES)
    except OSError as exc:
        raise InputError(path, f"cannot open: {exc.strerror or exc}") from exc
    if size == 0:
        raise InputError(path, "empty file (0 bytes)")
    try:
        with _decoders_for_the_reader():
            if head.startswith(_TIFF_MAGIC):
                image = _read_tiff(path, max_pixels)
            elif head.startswith(_PNG_MAGIC):
                image = _read_png(path, head, max_pixels)
            elif head.startswith(_JPEG_MAGIC) or head.startswith(_BMP_MAGIC):
                image = _read_pillow(path, max_pixels)
            else:
                raise InputError(path, "not a PNG, BMP, JPEG or TIFF file (unrecognised header)")
    except InputError:
        raise
    except MemoryError as exc:
        raise InputError(path, "not enough memory to decode") from exc
    except Exception as exc:  # any decoder failure on this one file becomes one line for the user
        raise InputError(path, f"corrupt or truncated ({type(exc).__name__}: {_short(exc)})") from exc
    return _as_supported_dtype(path, image)


def _short(exc: BaseException, limit: int = 120) -> str:
    text = " ".join(str(exc).split()) or "no detail"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_pixels(path: Path, height: int, width: int, max_pixels: int) -> None:
    if height < 1 or width < 1:
        raise InputError(path, f"unsupported shape: {height}×{width} has no pixels")
    if height * width > max_pixels:
        raise InputError(
            path, f"too many pixels: {height}×{width} = {height * width:,} > cap {max_pixels:,}"
        )


def layout(shape: tuple[int, ...]) -> str | None:
    """Name the layout of an array shape once singleton axes are dropped: "HW", "HWC", "CHW" or None.

    A 3-D shape is channel-last when its last axis is small, else channel-first when its first is small.
    """
    dims = [d for d in shape if d != 1]
    if len(dims) == 2:
        return "HW"
    if len(dims) == 3:
        if dims[-1] <= MAX_CHANNELS:
            return "HWC"
        if dims[0] <= MAX_CHANNELS:
            return "CHW"
    return None


def _spatial(shape: tuple[int, ...], kind: str) -> tuple[int, int]:
    """Height and width of a shape of the given layout."""
    dims = [d for d in shape if d != 1]
    return (dims[1], dims[2]) if kind == "CHW" else (dims[0], dims[1])


def _to_hwc(array: np.ndarray, kind: str) -> np.ndarray:
    """Array of a known layout as H×W×C."""
    squeezed = array.squeeze()
    if kind == "HW":
        return squeezed[..., np.newaxis]
    if kind == "CHW":
        return np.moveaxis(squeezed, 0, -1)
    return squeezed


def _describe(shape: tuple[int, ...]) -> str:
    dims = [d for d in shape if d != 1]
    if len(dims) <= 1:
        return f"unsupported shape {shape}: not a 2-D image"
    if len(dims) == 3:
        return f"unsupported shape {shape}: more than {MAX_CHANNELS} channels, or a volume"
    return f"unsupported shape {shape}: volumes and multi-dimensional stacks are not supported"


@contextmanager
def _decoders_for_the_reader() -> Iterator[None]:
    """While one file is decoded: Pillow's decompression-bomb guard off (the reader enforces its own cap,
    max_pixels, from the header; the guard would refuse a legitimate 10,000 × 10,000 slide), and tifffile's own
    warnings about damaged files quiet (the reader reports them as one InputError line). Both are restored
    afterwards, so importing the app changes nothing for other users of these libraries."""
    tiff_log = logging.getLogger("tifffile")
    level, bomb_cap = tiff_log.level, Image.MAX_IMAGE_PIXELS
    tiff_log.setLevel(logging.ERROR)
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        tiff_log.setLevel(level)
        Image.MAX_IMAGE_PIXELS = bomb_cap


def _read_tiff(path: Path, max_pixels: int) -> np.ndarray:
    """First image of a TIFF: the first series when it is one 2-D image, else the series' first page.

    A series with a depth axis (Z > 1) is a volume and refused rather than silently cut to one slice.
    """
    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise InputError(path, "corrupt or truncated TIFF: no readable image in it")
        series = tif.series[0]
        shape = tuple(int(d) for d in series.shape)
        if _axis_size(series, "Z") > 1:
            raise InputError(path, f"unsupported shape {shape}: a volume (axes {series.axes})")
        if _axis_size(series, "C") > MAX_CHANNELS:
            raise InputError(path, f"unsupported shape {shape}: more than {MAX_CHANNELS} channels")
        kind = layout(shape)
        if kind is not None:
            height, width = _spatial(shape, kind)
            _check_pixels(path, height, width, max_pixels)
            return _to_hwc(series.asarray(), kind)
        if len(series.pages) > 1:
            page = series.pages[0]
            if page is not None:
                page_shape = tuple(int(d) for d in page.shape)
                page_kind = layout(page_shape)
                if page_kind is not None and min(_spatial(page_shape, page_kind)) >= MIN_PAGE_SIDE:
                    height, width = _spatial(page_shape, page_kind)
                    _check_pixels(path, height, width, max_pixels)
                    return _to_hwc(page.asarray(), page_kind)
        raise InputError(path, _describe(shape))


def _axis_size(series: tifffile.TiffPageSeries, axis: str) -> int:
    """Size of a named axis of a tifffile series (1 when absent)."""
    return int(series.shape[series.axes.index(axis)]) if axis in series.axes else 1


def _read_png(path: Path, head: bytes, max_pixels: int) -> np.ndarray:
    """PNG through imagecodecs, which keeps 16-bit RGB (Pillow would reduce it to 8 bits)."""
    if len(head) < 26 or head[12:16] != b"IHDR":
        raise InputError(path, "corrupt PNG header")
    width, height = struct.unpack(">II", head[16:24])
    colour_type = head[25]
    _check_pixels(path, height, width, max_pixels)
    image = imagecodecs.png_decode(path.read_bytes())
    if image.ndim == 3 and colour_type == _PNG_GRAY_ALPHA:
        image = image[..., :1]
    return image if image.ndim == 3 else image[..., np.newaxis]


def _read_pillow(path: Path, max_pixels: int) -> np.ndarray:
    """BMP and JPEG through Pillow: the size comes from the header, pixels only after the cap check."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as opened:
            width, height = opened.size
            _check_pixels(path, height, width, max_pixels)
            mode = opened.mode
            im: Image.Image = opened
            if mode == "1" or mode == "LA":
                im = opened.convert("L")
            elif mode in ("P", "PA"):
                im = opened.convert("RGBA" if (mode == "PA" or "transparency" in opened.info) else "RGB")
            elif mode not in ("L", "RGB", "RGBA", "I;16", "I", "F"):
                im = opened.convert("RGB")
            image = np.asarray(im)
    return image if image.ndim == 3 else image[..., np.newaxis]


def _as_supported_dtype(path: Path, image: np.ndarray) -> np.ndarray:
    """Accept integer, float and boolean pixels; booleans become uint8 0/1."""
    if image.dtype == np.bool_:
        return image.astype(np.uint8)
    if image.dtype.kind not in "uif":
        raise InputError(path, f"unsupported pixel type {image.dtype}")
    if image.ndim != 3 or not 1 <= image.shape[2] <= MAX_CHANNELS:
        raise InputError(path, _describe(image.shape))
    return image
