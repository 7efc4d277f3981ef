"""Files of the challenge layout: images in any supported format and meta.csv (labels: `app.writer.write_labels`).

Writers are byte-deterministic (no timestamps), so one seed always gives the same files.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import imagecodecs
import imageio.v3 as iio
import numpy as np
import tifffile

from training.synth.formats import JPEG_QUALITY, StorageFormat

META_COLUMNS = ("name", "split", "modality", "style", "height", "width", "file", "format", "cells")


def write_image(
    path: Path, image: np.ndarray, fmt: StorageFormat, jpeg_quality: int = JPEG_QUALITY[1], tiff_zlib: bool = False
) -> None:
    """Write an already quantised image (`formats.quantise`) in the format's container.

    TIFFs are written uncompressed or, with `tiff_zlib`, deflate-compressed (both occur in practice).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt.ext in (".tif", ".tiff"):
        extra: dict[str, Any] = {"compression": "zlib"} if tiff_zlib else {}
        if fmt.layout == "gray":
            tifffile.imwrite(path, image, photometric="minisblack", **extra)
        elif fmt.layout == "chw":
            tifffile.imwrite(path, image, photometric="rgb", planarconfig="separate", **extra)
        else:
            tifffile.imwrite(path, image, photometric="rgb", **extra)
    elif fmt.ext == ".png" and image.dtype == np.uint16 and image.ndim == 3:
        path.write_bytes(imagecodecs.png_encode(image))  # Pillow cannot write 16-bit colour PNG
    elif fmt.ext in (".jpg", ".jpeg"):
        iio.imwrite(path, image, extension=fmt.ext, quality=int(jpeg_quality))
    else:
        iio.imwrite(path, image, extension=fmt.ext)


def write_meta(path: Path, rows: list[dict]) -> None:
    """meta.csv with one row per image (columns `META_COLUMNS`)."""
    with open(path, "w", newline="") as fh:
        out = csv.DictWriter(fh, fieldnames=META_COLUMNS)
        out.writeheader()
        for row in rows:
            out.writerow({k: row[k] for k in META_COLUMNS})


def read_meta(path: Path) -> list[dict]:
    """Rows of a meta.csv, with height, width and cells as ints."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        for key in ("height", "width", "cells"):
            row[key] = int(row[key])
    return rows
