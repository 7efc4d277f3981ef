"""Small tiled slides for the streamed-slide tests: bright discs of known labels on black glass, written as tiled
(optionally pyramidal) TIFFs with tifffile, and the settings that stream them through the contract model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from app.config import InferenceConfig

# Cores of 256 px with a 48 px halo (wider than any disc), one view at scale 1, everything streamed.
SLIDE_CFG = InferenceConfig(
    window=256, stride=256, batch_size=4, scale_mode="fixed", scales=(1.0,), fluorescence_scales=(1.0,),
    budget="none", device="cpu", threads=1, slide_threshold_pixels=0, slide_tile_size=256, slide_tile_halo=48,
    slide_overview_pixels=10**8, slide_write_tile=128, slide_threads=2,
)
# The in-memory whole-slide path on the same tiles, run in order (app.segment.segment_tiled).
TILED_CFG = SLIDE_CFG.with_overrides(tile_size=256, tile_halo=48, tile_workers=0, tile_threshold_pixels=0)


def disc_slide(height: int, width: int, *, spacing: int = 40, blank: tuple[tuple[int, int, int, int], ...] = (),
               extra: tuple[tuple[int, int, int], ...] = (), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 H×W×3 image, int32 truth) of discs of radius 5..13 on a `spacing` grid, none near the `blank` boxes
    (y0, y1, x0, x1), plus `extra` discs (cy, cx, r) anywhere; labels 1..N."""
    rng = np.random.default_rng(seed)
    grey = np.zeros((height, width), np.uint8)
    truth = np.zeros((height, width), np.int32)
    yy, xx = np.mgrid[:height, :width]
    discs = [(cy, cx, int(rng.integers(5, 14))) for cy in range(spacing // 2, height - 14, spacing)
             for cx in range(spacing // 2, width - 14, spacing)]
    for y0, y1, x0, x1 in blank:
        discs = [d for d in discs if not (y0 - 14 <= d[0] < y1 + 14 and x0 - 14 <= d[1] < x1 + 14)]
    discs += list(extra)
    for n, (cy, cx, r) in enumerate(discs, start=1):
        box = (slice(max(0, cy - r), cy + r + 1), slice(max(0, cx - r), cx + r + 1))
        disc = (yy[box] - cy) ** 2 + (xx[box] - cx) ** 2 <= r * r
        grey[box][disc] = 220
        truth[box][disc] = n
    return np.repeat(grey[:, :, None], 3, axis=2), truth


def write_tiled(path: Path, image: np.ndarray, *, tile: int = 64, levels: int = 0) -> Path:
    """`image` as a tiled zlib TIFF (RGB or grey), with `levels` sub-resolution levels (each half the last)."""
    photometric = "rgb" if image.ndim == 3 and image.shape[2] == 3 else "minisblack"
    with tifffile.TiffWriter(path, bigtiff=True) as tiff:
        tiff.write(image, tile=(tile, tile), compression="zlib", photometric=photometric, subifds=levels)
        for level in range(1, levels + 1):
            tiff.write(image[:: 2**level, :: 2**level], tile=(tile, tile), compression="zlib",
                       photometric=photometric, subfiletype=1)
    return path
