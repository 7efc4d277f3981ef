"""Typical object size of an image and the scales that show its objects to the model at its trained size.

A fixed scale per modality (MT2's 1.5 for fluorescence, 0.8/1.0/1.2 otherwise) is right only for images whose cells
happen to be the size of the training cells. In adaptive mode quick looks find the objects instead: the model runs
without flipped views on a central crop of about `cfg.estimate_side` pixels as the model sees it (one window), the
crop is post-processed, and the median equivalent diameter of the objects not touching the crop's border is that
look's estimate.

One look can be wrong in two ways, and both keep the objects at about the model's favourite size in its view:
objects seen too large split into pieces (a 140 px phase-contrast cell seen at 70 px), objects seen too small merge
into blobs. Their estimate in image pixels then moves with the look's scale, while a look that sees the real objects
gives the same size as the next one. So the looks go coarse to fine (`cfg.estimate_scales`, an octave apart) and the
first look is accepted whose objects reach the model at `cfg.estimate_min_view` px or more and whose estimate the
next finer look confirms within `cfg.estimate_agreement` (the finest look needs no confirmation when no coarser look
reached that size); the estimate is the finer look's, which sees the objects with more pixels. When the looks
contradict each other, the median of those that reached the model at the minimum size decides (any of them may show
pieces or blobs: the middle bounds the error either way); when none reached it, the look whose objects came closest
to `cfg.target_diameter` in its view. The image's scales are then `cfg.adaptive_spread` around target / diameter,
with the target of the image's modality (`cfg.fluorescence_target_diameter` for fluorescence, when set). A
diameter given by the user (`--diameter`, Cellpose's convention) skips the looks; too few objects fall back to the
fixed scales.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage.segmentation import clear_border

from app.config import InferenceConfig
from app.infer import Plan, fuse, predict_maps, scale_views
from app.postprocess import instance_map

ESTIMATED, GIVEN, FIXED = "estimated", "given", "fixed"


@dataclass(frozen=True)
class SizeEstimate:
    """Where an image's scales came from: the diameter (px of the original image) and what it cost."""

    diameter: float | None
    source: str  # "estimated", "given" or "fixed" (fixed mode, or too few objects found)
    objects: int = 0
    looks: int = 0
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


def label_diameter(labels: np.ndarray) -> float | None:
    """Typical object size of a label map: the median equivalent diameter of the objects off the border, or
    of all objects when every one touches it (a crop of large cells); None for an empty map."""
    diameter, _ = median_diameter(labels, 1)
    if diameter is None and labels.any():
        diameter = float(np.median(equivalent_diameters(labels)))
    return diameter


def central_crop(image: np.ndarray, side: int) -> np.ndarray:
    """The central side × side part of an H×W(×C) array (the whole array along shorter axes)."""
    h, w = image.shape[:2]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return image[top : top + side, left : left + side]


def clip_scale(scale: float, cfg: InferenceConfig) -> float:
    low, high = cfg.adaptive_scale_range
    return float(min(max(scale, low), high))


def look_side(scale: float, cfg: InferenceConfig) -> int:
    """Side (px of the image) of the central crop a look at `scale` runs on: `cfg.estimate_side` px as the model
    sees it (one window), and at least a quarter window."""
    return max(cfg.window // 4, int(round(cfg.estimate_side / scale)))


def look(image_u8: np.ndarray, runner: Any, scale: float, cfg: InferenceConfig) -> tuple[float | None, int]:
    """One single-view look at `scale` on a central crop of one window: (median diameter in px of the image, or
    None when fewer than `cfg.estimate_min_objects` objects were found; the objects counted).

    A look below scale 1 is post-processed at the model's view, not at the crop's size: its crop is up to 1/scale
    times larger than the window (a whole 9 MP image at 1/8), and the maps resized back to it would cost a
    watershed of that size for a size estimate. S_min is scaled to that view (it counts the image's pixels) and
    the diameters are scaled back."""
    crop = central_crop(image_u8, look_side(scale, cfg))
    if scale >= 1.0:
        plan = Plan((scale,), cfg.stride)
        cell, boundary = predict_maps(crop, runner, plan, cfg)
        return median_diameter(instance_map(cell, boundary, cfg, plan.view_scale), cfg.estimate_min_objects)
    cell, boundary = fuse(scale_views(crop, runner, scale, cfg, stride=cfg.stride), "mean", owned=True)
    shrink = cell.shape[0] / crop.shape[0]  # the scale as the resize made it
    view_cfg = cfg.with_overrides(min_seed_area=max(1, round(cfg.min_seed_area * shrink * shrink)))
    diameter, count = median_diameter(instance_map(cell, boundary, view_cfg), cfg.estimate_min_objects)
    return (diameter / shrink if diameter is not None else None), count


def pick_estimate(
    scales: Sequence[float], at: Callable[[float], tuple[float | None, int]], cfg: InferenceConfig
) -> tuple[float | None, float | None]:
    """(diameter, scale of the look that decided) from looks taken coarse to fine through `at(scale)` ->
    (median diameter in px of the image or None, objects), asked for only as far as needed.

    Accepted: the first look whose objects reach the model at `cfg.estimate_min_view` px and whose estimate the
    next finer look confirms (the finer look's estimate is returned: it sees the objects with more pixels); the
    finest look needs no confirmation when no coarser look reached that size (tiny objects only it can see).
    When the looks that reached it contradict each other, each of them may show pieces or blobs, so their
    median decides (the error is bounded either way); when none reached it, the look that showed its objects
    closest to `cfg.target_diameter`. (None, None) when no look found any objects."""
    order = sorted(scales)
    seen: dict[float, float] = {}
    large: dict[float, float] = {}  # the looks whose objects reached the model at the minimum size
    for i, scale in enumerate(order):
        diameter = at(scale)[0]
        if diameter is None:
            continue
        seen[scale] = diameter
        if diameter * scale < cfg.estimate_min_view:
            continue
        contradicted = bool(large)
        large[scale] = diameter
        if i + 1 == len(order):
            if contradicted:
                break
            return diameter, scale  # tiny objects that only the finest look sees large enough
        finer = at(order[i + 1])[0]
        if finer is not None and abs(math.log(diameter / finer)) <= math.log(cfg.estimate_agreement):
            return finer, order[i + 1]
    if large:
        middle = float(np.median(list(large.values())))
        return middle, min(large, key=lambda s: abs(large[s] - middle))
    if not seen:
        return None, None
    closest = min(seen, key=lambda s: abs(math.log(seen[s] * s / cfg.target_diameter)))
    return seen[closest], closest


def estimate_diameter(image_u8: np.ndarray, runner: Any, cfg: InferenceConfig) -> SizeEstimate:
    """Median object diameter of an image (px) from single-view looks at `cfg.estimate_scales` (`pick_estimate`
    says which decides), each look run once."""
    started = time.perf_counter()
    found: dict[float, tuple[float | None, int]] = {}

    def at(scale: float) -> tuple[float | None, int]:
        if scale not in found:
            found[scale] = look(image_u8, runner, scale, cfg)
        return found[scale]

    diameter, chosen = pick_estimate(cfg.estimate_scales, at, cfg)
    seconds = time.perf_counter() - started
    if diameter is None or chosen is None:
        return SizeEstimate(None, FIXED, max(n for _, n in found.values()), len(found), seconds)
    return SizeEstimate(diameter, ESTIMATED, found[chosen][1], len(found), seconds)


def target_diameter(fluorescence: bool, cfg: InferenceConfig) -> float:
    """The size (px) at which the model sees objects of this modality: `cfg.fluorescence_target_diameter` for
    fluorescence when set, else `cfg.target_diameter`."""
    if fluorescence and cfg.fluorescence_target_diameter > 0:
        return cfg.fluorescence_target_diameter
    return cfg.target_diameter


def describe_scale_rule(cfg: InferenceConfig) -> str:
    """How a run chooses scales, for the lines `predict` and `tune` print: the mode and, when adaptive, the
    target sizes (and a diameter the user gave)."""
    if cfg.scale_mode == "fixed":
        return "fixed scales"
    given = f", diameter given {cfg.diameter:g} px" if cfg.diameter > 0 else ""
    return (f"adaptive scales, target diameter {target_diameter(False, cfg):g} px (fluorescence "
            f"{target_diameter(True, cfg):g} px){given}")


def adaptive_scales(diameter: float, cfg: InferenceConfig, fluorescence: bool = False) -> tuple[float, ...]:
    """`cfg.adaptive_spread` around the scale that brings `diameter` to the modality's target diameter."""
    centre = clip_scale(target_diameter(fluorescence, cfg) / diameter, cfg)
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


def modality_scales(fluorescence: bool, cfg: InferenceConfig) -> tuple[float, ...]:
    """MT2's scales: `cfg.fluorescence_scales` (1.5 alone) for fluorescence, `cfg.scales` (0.8/1.0/1.2) otherwise."""
    return tuple(cfg.fluorescence_scales if fluorescence else cfg.scales)


def choose_scales(estimate: SizeEstimate, fluorescence: bool, cfg: InferenceConfig) -> tuple[float, ...]:
    """The image's full-plan scales: adaptive around its diameter, else MT2's for its modality."""
    if estimate.diameter is not None:
        return adaptive_scales(estimate.diameter, cfg, fluorescence)
    return modality_scales(fluorescence, cfg)


__all__ = [
    "ESTIMATED",
    "FIXED",
    "GIVEN",
    "SizeEstimate",
    "adaptive_scales",
    "central_crop",
    "choose_scales",
    "describe_scale_rule",
    "equivalent_diameters",
    "estimate_diameter",
    "label_diameter",
    "look",
    "look_side",
    "median_diameter",
    "modality_scales",
    "pick_estimate",
    "size_estimate",
    "target_diameter",
]
