"""One data folder as one zip archive: normalised images and label maps, lossless and compact.

An image is stored as the app's reader and normaliser leave it (`app.normalize.read_normalized`: uint8 H×W×3):
as lossless WebP (Pillow, which every PyTorch machine has, decodes it), or as a `.npy` array where WebP cannot
hold it (a side above its limit), one channel there when the three are equal. Label maps are `.npy` arrays of
uint16 (uint32 above 65,535 cells), deflated inside the zip (LZMA would save 0.1 MiB on the real pool but needs
a Python built with liblzma). `index.json` lists the entries in order, with whether each image is grey.
Reading an archive back gives exactly the arrays that were written.
"""

from __future__ import annotations

import io
import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from app.writer import write_atomic
from training.gpu_kit.layout import LAYOUT

WEBP_MAX_SIDE = 16383  # the format's limit
# Encoder effort (0-6). The slowest method pays only on small grey images: on the real training pool it saved
# 22% on dark fluorescence tiles, 0% on colour tissue tiles and 1% on 1 MP phase-contrast images, at 5-40 times
# the encoding time.
WEBP_METHOD = 4
WEBP_METHOD_SMALL_GREY = 6
SMALL_PIXELS = 500_000
DEFLATE_LEVEL = 9
MEMBER_OVERHEAD = 128  # bytes of zip headers per member (local and central entries with a short name)
FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # zip entries carry no build time, so one input gives one archive


@dataclass(frozen=True)
class Entry:
    """One image of a data folder as the trainer reads it; `labels` None for an unlabelled image."""

    name: str
    image: np.ndarray  # uint8 H×W×3
    labels: np.ndarray | None = None  # H×W: uint16 or uint32 from an archive, int32 when regenerated


def is_grey(image: np.ndarray) -> bool:
    """The three channels are identical (a grey or single-signal image after the app's channel rule)."""
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]))


def label_dtype(labels: np.ndarray) -> type:
    """uint16 when every value fits, else uint32 (what the app writes as label files)."""
    return np.uint16 if int(labels.max(initial=0)) <= np.iinfo(np.uint16).max else np.uint32


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def encode_image(image: np.ndarray) -> tuple[str, bytes, bool]:
    """(member suffix, bytes, grey) of a uint8 H×W×3 image: lossless WebP when it fits the format, else .npy."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"images are stored as uint8 H×W×3, got {image.dtype} {image.shape}")
    grey = is_grey(image)
    if max(image.shape[:2]) > WEBP_MAX_SIDE:
        return ".npy", npy_bytes(np.ascontiguousarray(image[..., :1] if grey else image)), grey
    method = WEBP_METHOD_SMALL_GREY if grey and image.shape[0] * image.shape[1] <= SMALL_PIXELS else WEBP_METHOD
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "WEBP", lossless=True, quality=100, method=method, exact=True)
    return ".webp", buffer.getvalue(), grey


def decode_image(suffix: str, data: bytes, grey: bool) -> np.ndarray:
    """The uint8 H×W×3 image `encode_image` stored."""
    if suffix == ".webp":
        with Image.open(io.BytesIO(data)) as opened:
            image = np.asarray(opened.convert("RGB"))
    else:
        image = np.load(io.BytesIO(data), allow_pickle=False)
    if grey:
        image = np.repeat(image[..., :1], 3, axis=2)
    return np.ascontiguousarray(image, dtype=np.uint8)


@dataclass(frozen=True)
class Encoded:
    """One entry ready for its archive: the image's bytes and suffix, the labels' .npy bytes (None: unlabelled)."""

    name: str
    shape: tuple[int, int]
    grey: bool
    suffix: str
    image: bytes
    labels: bytes | None
    size: int  # what the entry takes in its archive: the image, the deflated labels, zip headers


def encode_entry(entry: Entry) -> Encoded:
    """`encode_image` of the image and the labels as .npy of `label_dtype` (pure: runs in worker processes)."""
    suffix, data, grey = encode_image(entry.image)
    labels, size = None, len(data) + MEMBER_OVERHEAD
    if entry.labels is not None:
        labels = npy_bytes(entry.labels.astype(label_dtype(entry.labels), copy=False))
        size += len(zlib.compress(labels, DEFLATE_LEVEL)) + MEMBER_OVERHEAD
    shape = (int(entry.image.shape[0]), int(entry.image.shape[1]))
    return Encoded(entry.name, shape, grey, suffix, data, labels, size)


def _member(name: str, compress: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=FIXED_DATE)
    info.compress_type = compress
    return info


def write_archive(path: Path, entries: list[Encoded]) -> list[dict[str, Any]]:
    """Write encoded entries into one zip archive at `path` (atomically): images stored as they are (WebP is
    compressed already), labels deflated; return the index it holds."""
    index: list[dict[str, Any]] = []
    for k, entry in enumerate(entries):
        index.append({
            "name": entry.name, "image": f"{LAYOUT.images_member}/{k:05d}{entry.suffix}", "grey": entry.grey,
            "shape": list(entry.shape),
            "labels": f"{LAYOUT.labels_member}/{k:05d}.npy" if entry.labels is not None else None,
        })

    def write(handle: Any) -> None:
        with zipfile.ZipFile(handle, "w") as archive:
            for entry, record in zip(entries, index):
                archive.writestr(_member(record["image"], zipfile.ZIP_STORED), entry.image)
                if entry.labels is not None:
                    archive.writestr(_member(record["labels"], zipfile.ZIP_DEFLATED), entry.labels,
                                     compresslevel=DEFLATE_LEVEL)
            archive.writestr(_member(LAYOUT.index_member, zipfile.ZIP_DEFLATED), json.dumps(index))

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, write)
    return index


def read_index(path: Path) -> list[dict[str, Any]]:
    """The entries an archive holds, in order (names, shapes, whether labelled)."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read(LAYOUT.index_member))


def read_archive(path: Path, select: list[int] | None = None) -> Iterator[Entry]:
    """The entries of an archive (all, or those at the positions `select`), decoded; a damaged archive raises
    ValueError naming the file."""
    try:
        with zipfile.ZipFile(path) as archive:
            index = json.loads(archive.read(LAYOUT.index_member))
            for k in select if select is not None else range(len(index)):
                record = index[k]
                suffix = Path(record["image"]).suffix
                image = decode_image(suffix, archive.read(record["image"]), bool(record["grey"]))
                labels = None
                if record["labels"] is not None:
                    labels = np.load(io.BytesIO(archive.read(record["labels"])), allow_pickle=False)
                if list(image.shape[:2]) != list(record["shape"]):
                    raise ValueError(f"{Path(path).name}: {record['name']} decodes to {image.shape[:2]}, its index "
                                     f"says {record['shape']}")
                yield Entry(record["name"], image, labels)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise ValueError(f"{Path(path).name}: damaged kit archive ({exc})") from exc


__all__ = [
    "Encoded",
    "Entry",
    "decode_image",
    "encode_entry",
    "encode_image",
    "is_grey",
    "label_dtype",
    "read_archive",
    "read_index",
    "write_archive",
]
