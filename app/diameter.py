"""Typical object size of an image and the scales that show its objects to the model at its trained size.

A fixed scale per modality (MT2's 1.5 for fluorescence, 0.8/1.0/1.2 otherwise) is right only for images
whose cells happen to be the size of the training cells. In adaptive mode quick passes find the objects
instead: the model runs without flipped views on a central crop of about `cfg.estimate_side` pixels as the
model sees it (one window), the crop is post-processed, and the median equivalent diameter of the objects not
touching the crop's border is the estimate. The first look is coarse (`cfg.estimate_first_scales`, 0.5×
first): a whole phase-contrast cell of 70 px seen at full size splits into pieces of about 20 px that pass for
small cells, so an estimate started there confirms its own mistake, while small nuclei seen too small are
simply not found and the next first scale looks closer. When the estimate is far from `cfg.target_diameter`,
a further pass looks again at the scale it suggests (tiny cells merge and huge ones split at a wrong scale, so
the later look is the better one). The image's scales are then `cfg.adaptive_spread` around target /
diameter. A diameter given by the user (`--diameter`, Cellpose's convention) skips the passes; too few objects
fall back to the fixed scales.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage.segmentation import clear_border

from app.config import InferenceConfig
from app.infer import Plan, predict_maps
from app.postprocess import instance_map

ESTIMATED, GIVEN, FIXED = "estimated", "given", "fixed"


@dataclass(frozen=True)
class SizeEstimate:
    """Where an image's scales came from: the diameter (px of the original image) and what it cost."""

    diameter: float | None
    source: str  # "estimated", "given" or "fixed" (fixed mode, or too few objects found)
    objects: int = 0
    passes: int = 0
    seconds: float = 0.0


def equivalent_diameters(labels: np.ndarray) -> np.ndarray:
    """Diameter of the disc of the same area, for every label present (0 is background)."""
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    return np.sqrt(4.0 * areas / math.pi)


def median_diameter(labels: np.ndarray, min_objects: int) -> tuple[float | None, int]:
    """Median equivalent diameter of the objects that do not touch the border, and their count; None when
    fewer than `min_objects` remain (too little evidence for a size)."""
    inner = clear_border(labels)
    diameters = equivalent_diameters(inner)
    if diameters.size < min_objects:
        return None, int(diameters.size)
    return float(np.median(diameters)), int(diameters.size)


def central_crop(image: np.ndarray, side: int) -> np.ndarray:
    """The central side × side part of an H×W(×C) array (the whole array along shorter axes)."""
    h, w = image.shape[:2]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return image[top : top + side, left : left + side]


def clip_scale(scale: float, cfg: InferenceConfig) -> float:
    low, high = cfg.adaptive_scale_range
    return float(min(max(scale, low), high))


def look(image_u8: np.ndarray, runner: Any, scale: float, cfg: InferenceConfig) -> tuple[float | None, int]:
    """One single-view pass at `scale` on a central crop of one window: (median diameter in px of the image, or
    None when fewer than `cfg.estimate_min_objects` objects were found; the objects counted)."""
    crop = central_crop(image_u8, max(cfg.window // 4, int(round(cfg.estimate_side / scale))))
    cell, boundary = predict_maps(crop, runner, Plan((scale,), cfg.stride), cfg)
    return median_diameter(instance_map(cell, boundary, cfg), cfg.estimate_min_objects)


def estimate_diameter(image_u8: np.ndarray, runner: Any, cfg: InferenceConfig) -> SizeEstimate:
    """Median object diameter of an image from up to `cfg.estimate_passes` looks: the first scales in order
    until one finds objects, then at the scale the latest estimate suggests until it stops moving."""
    started = time.perf_counter()
    first = list(cfg.estimate_first_scales)
    scale, best, count, passes = first.pop(0), None, 0, 0
    while passes < max(1, cfg.estimate_passes):
        found, n = look(image_u8, runner, scale, cfg)
        passes += 1
        if found is None:
            if best is not None or not first:
                break  # a refining look that finds nothing keeps the estimate before it
            scale = first.pop(0)
            continue
        best, count = found, n
        wanted = clip_scale(cfg.target_diameter / found, cfg)
        if abs(math.log(wanted / scale)) <= math.log(cfg.estimate_refine_ratio):
            break
        scale = wanted
    seconds = time.perf_counter() - started
    if best is None:
        return SizeEstimate(None, FIXED, count, passes, seconds)
    return SizeEstimate(best, ESTIMATED, count, passes, seconds)


def adaptive_scales(diameter: float, cfg: InferenceConfig) -> tuple[float, ...]:
    """`cfg.adaptive_spread` around the scale that brings `diameter` to `cfg.target_diameter`."""
    centre = clip_scale(cfg.target_diameter / diameter, cfg)
    scales = (round(clip_scale(centre * f, cfg), 4) for f in cfg.adaptive_spread)
    return tuple(dict.fromkeys(scales))  # clipping can repeat a scale: each runs once


def size_estimate(image_u8: np.ndarray, runner: Any, cfg: InferenceConfig, allowed: bool = True) -> SizeEstimate:
    """How this image's scales are chosen: the user's diameter, an estimate (when `allowed` by the time
    budget), or MT2's fixed scales."""
    if cfg.scale_mode == "fixed":
        return SizeEstimate(None, FIXED)
    if cfg.diameter > 0:
        return SizeEstimate(float(cfg.diameter), GIVEN)
    if not allowed:
        return SizeEstimate(None, FIXED)
    return estimate_diameter(image_u8, runner, cfg)


def choose_scales(estimate: SizeEstimate, fluorescence: bool, cfg: InferenceConfig) -> tuple[float, ...]:
    """The image's full-plan scales: adaptive around its diameter, else MT2's for its modality."""
    if estimate.diameter is not None:
        return adaptive_scales(estimate.diameter, cfg)
    return tuple(cfg.fluorescence_scales if fluorescence else cfg.scales)


__all__ = [
    "ESTIMATED",
    "FIXED",
    "GIVEN",
    "SizeEstimate",
    "adaptive_scales",
    "central_crop",
    "choose_scales",
    "equivalent_diameters",
    "estimate_diameter",
    "look",
    "median_diameter",
    "size_estimate",
]
