"""Output names and atomic writing of label TIFFs (and of other files: the CSV report, the optional extras).

Every file is written under a hidden temporary name in its destination folder and then renamed over the
final name, so a reader (or the challenge's evaluation) never sees a half-written file and a failure leaves
nothing behind.
"""

from __future__ import annotations

import csv
import io
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import tifffile

from app.config import CHALLENGE

UINT16_LABELS = np.iinfo(np.uint16).max
UINT32_LABELS = np.iinfo(np.uint32).max
TEMP_SUFFIX = ".tmp"


def image_stem(path: Path | str) -> str:
    """An image's name up to its first dot: what the challenge names its outputs after."""
    return Path(path).name.split(".", 1)[0]


def output_name(path: Path | str, suffix: str = CHALLENGE.output_suffix) -> str:
    """The challenge's output name: `image_stem` plus "_label.tiff" (or another suffix, for the optional
    outputs beside it, `app.config.EXTRA_SUFFIXES`)."""
    return image_stem(path) + suffix


def label_dtype(max_label: int) -> np.dtype:
    """uint16 while the labels fit, uint32 beyond 65,535 cells."""
    if max_label <= UINT16_LABELS:
        return np.dtype(np.uint16)
    if max_label <= UINT32_LABELS:
        return np.dtype(np.uint32)
    raise ValueError(f"{max_label} labels do not fit in uint32")


def write_atomic(path: Path | str, write: Callable[[BinaryIO], Any]) -> Path:
    """Call `write(handle)` on a hidden temporary file beside `path`, then rename it to `path`.

    The temporary file is created with the usual permissions (0666 less the umask), so the final file is
    readable by others exactly like a file written in place. On any failure it is removed and the error re-raised.
    """
    path = Path(path)
    temp = path.parent / f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}"
    handle = open(temp, "xb")  # exclusive create, mode 0666 less the umask
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def write_labels(path: Path | str, labels: np.ndarray) -> Path:
    """Write an H×W instance map as a zlib-compressed TIFF: uint16, or uint32 above 65,535 labels."""
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2-D, got shape {labels.shape}")
    if labels.dtype.kind not in "ui":
        raise ValueError(f"label map must be integer, got {labels.dtype}")
    max_label = int(labels.max()) if labels.size else 0
    if labels.size and int(labels.min()) < 0:
        raise ValueError("label map has negative labels")
    data = labels.astype(label_dtype(max_label), copy=False)
    return write_atomic(
        path, lambda handle: tifffile.imwrite(handle, data, compression="zlib", photometric="minisblack")
    )


def rows_csv(rows: Iterable[Iterable[Any]]) -> str:
    """Rows as CSV text with "\\n" line ends; fields holding commas or quotes are quoted."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def write_text(path: Path | str, text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    return write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))
