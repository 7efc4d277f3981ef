"""Sliding-window inference at one or several scales, optionally over flipped views, and the fusion of the maps.

MT2's test-time recipe is several scales fused by the pixel-wise maximum. `cfg.flips` adds flipped views at
every scale (averaged, then flipped back) and `cfg.fusion` may average the scales instead; both are chosen per
model by `python -m app tune`, since which helps depends on the network.

One scale, one view: resize the uint8 image; when no side exceeds `cfg.one_pass_max_side`, run it through the
model as one input zero-padded to the network's size multiple (`app.tiling`); else zero-pad it only when it is
smaller than a window (the network's convolutions pad with zeros too, so the kept region sees the same
border), run `cfg.window`-sized windows at
`stride` in batches of `cfg.batch_size`, average the overlapping window outputs (Gaussian-weighted towards window
centres, `cfg.window_sigma`; 0 gives MT2's plain average) in float32 maps the size of the scaled image, crop and
resize back. The flipped views of one scale are averaged at the scaled size and resized back once (a
downscaled image's views cost their own pixels, not the original's); several scales are combined by `fuse` at
the original size.

Resizing, of the image to a scale and of the maps back, is Pillow's bilinear filter (`resize`), which widens its
support by the shrink factor along an axis it shrinks: every source pixel counts, as in the trainer's `torch` resize
(`antialias=True`), where plain bilinear sampling would read only two of every four rows and columns at scale 0.25
and show the model an aliased, noisier image than it was trained on. Along an axis it enlarges it is the usual
bilinear interpolation with half-pixel centres (`scipy.ndimage.zoom(order=1, grid_mode=True, mode="nearest")`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Protocol

import numpy as np
from PIL import Image

from app.config import FLIP_AXES, FUSIONS, InferenceConfig, check_choice
from app.errors import ModelError
from app.tiling import one_pass_shape, scaled_size, window_grid, window_starts
from app.timing import timed


@dataclass(frozen=True)
class Plan:
    """How to look at one image: its scales, the window stride and the flipped views per scale, with a one-line
    reason the pipeline logs (`app.plan` chooses plans within the time budget)."""

    scales: tuple[float, ...]
    stride: int
    reason: str = ""
    flips: int = 1

    @property
    def view_scale(self) -> float:
        """Model pixels per pixel of the fused maps: the geometric mean of the scales (post-processing sizes
        that belong to the model's view are divided by it)."""
        return float(np.exp(np.mean(np.log(self.scales)))) if self.scales else 1.0


class Runner(Protocol):
    """What inference and the planner need from a model (`app.runner.ModelRunner`, the trainer's
    `TorchRunner`): `run` maps an N×3×H×W float32 batch to (cls, cell, boundary) float32 arrays;
    `provider` names where it runs (the planner probes CPUs and GPUs differently); `input_hw` is the fixed
    input size of a model that has one, else None."""

    provider: str
    input_hw: tuple[int, int] | None

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """A uint8 H×W×3 image or an H×W map resized to height×width by Pillow's bilinear filter (antialiased along an
    axis it shrinks); uint8 stays uint8, maps come back float32 and writable (fusion accumulates into them)."""
    if array.shape[:2] == (height, width):
        return array if array.dtype == np.uint8 else array.astype(np.float32, copy=False)
    source = np.ascontiguousarray(array, dtype=np.uint8 if array.dtype == np.uint8 else np.float32)
    return np.array(Image.fromarray(source).resize((width, height), Image.Resampling.BILINEAR))


def _check_inputs(image_u8: np.ndarray, scale: float, window: int, stride: int) -> None:
    if image_u8.dtype != np.uint8 or image_u8.ndim != 3 or image_u8.shape[2] != 3:
        raise ValueError(f"image must be uint8 H×W×3, got {image_u8.dtype} {image_u8.shape}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in 1..{window} (the window), got {stride}")


def window_profile(window: int, sigma: float) -> np.ndarray:
    """Weight of each position across a window: a Gaussian of `sigma` · window around its centre, or flat (0).

    Predictions near a window's edge see less context than those near its centre; weighting the overlap
    removes the seams a plain average leaves at window borders. The floor keeps image borders, which only
    window edges reach, well defined.
    """
    if sigma <= 0:
        return np.ones(window, np.float32)
    offset = np.arange(window, dtype=np.float64) - (window - 1) / 2
    profile = np.exp(-0.5 * (offset / (sigma * window)) ** 2)
    return np.maximum(profile / profile.max(), 1e-3).astype(np.float32)


def _coverage(length: int, window: int, stride: int, profile: np.ndarray) -> np.ndarray:
    """Summed window weight at each position along one axis (the windows form a grid, so 2-D is the product)."""
    total = np.zeros(max(length, window), np.float32)
    for start in window_starts(length, window, stride):
        total[start : start + window] += profile
    return total[:length]


def one_pass_limit(runner: Runner, cfg: InferenceConfig) -> int:
    """The largest scaled side this runner takes in one pass: `cfg.one_pass_max_side`, or 0 (always windows) for
    a model with a fixed input size."""
    return cfg.one_pass_max_side if runner.input_hw is None else 0


def _window_maps(
    scaled: np.ndarray, runner: Runner, cfg: InferenceConfig, stride: int, timings: dict[str, float] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Cell and boundary maps (float32, the size of `scaled`) of an already scaled image: one padded pass through
    the model when it is small enough (`app.tiling.one_pass_shape`; not for a model with a fixed input size),
    else overlapping windows."""
    window = cfg.window
    h, w = scaled.shape[:2]
    whole = one_pass_shape(h, w, one_pass_limit(runner, cfg))
    if whole is not None:
        with timed(timings, "fuse"):
            batch = np.zeros((1, 3, *whole), np.float32)
            np.multiply(scaled.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=batch[0, :, :h, :w], dtype=np.float32)
        with timed(timings, "model"):
            _, cell_out, boundary_out = runner.run(batch)
        return cell_out[0, 0, :h, :w].copy(), boundary_out[0, 0, :h, :w].copy()
    with timed(timings, "fuse"):
        ph, pw = max(h, window), max(w, window)
        if (ph, pw) != (h, w):
            scaled = np.pad(scaled, ((0, ph - h), (0, pw - w), (0, 0)))
        cell = np.zeros((ph, pw), np.float32)
        boundary = np.zeros((ph, pw), np.float32)
        corners = window_grid(ph, pw, window, stride)
        profile = window_profile(window, cfg.window_sigma)
        weight = np.outer(profile, profile)
    for first in range(0, len(corners), cfg.batch_size):
        group = corners[first : first + cfg.batch_size]
        with timed(timings, "fuse"):
            batch = np.empty((len(group), 3, window, window), np.float32)
            for i, (y, x) in enumerate(group):  # uint8 -> float32 in [0, 1] in one pass per window
                crop = scaled[y : y + window, x : x + window].transpose(2, 0, 1)
                np.multiply(crop, np.float32(1.0 / 255.0), out=batch[i], dtype=np.float32)
        with timed(timings, "model"):
            _, cell_out, boundary_out = runner.run(batch)
        with timed(timings, "fuse"):
            for i, (y, x) in enumerate(group):
                cell[y : y + window, x : x + window] += cell_out[i, 0] * weight
                boundary[y : y + window, x : x + window] += boundary_out[i, 0] * weight
    with timed(timings, "fuse"):
        inverse = 1.0 / (
            _coverage(ph, window, stride, profile)[:h, None] * _coverage(pw, window, stride, profile)[None, :w]
        )
        return cell[:h, :w] * inverse, boundary[:h, :w] * inverse


def scale_views(
    image_u8: np.ndarray,
    runner: Runner,
    scale: float,
    cfg: InferenceConfig,
    *,
    stride: int | None = None,
    flips: int = 1,
    timings: dict[str, float] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Cell and boundary maps (float32) of the image at `scale`, one pair per flipped view, at the scaled size.

    Each view flips the scaled image (`FLIP_AXES[flips]`), runs the windows and flips the maps back, so every
    pair is aligned with the scaled image; the first view is the image itself. A generator, so a caller
    averaging the views holds one at a time; `restore_size` brings their mean back to the image's size (one
    resize per scale however many views: resizing is linear, so it commutes with the mean).
    """
    window, stride = cfg.window, stride or cfg.stride
    _check_inputs(image_u8, scale, window, stride)
    check_choice("flips", flips, FLIP_AXES)
    fixed = runner.input_hw
    if fixed is not None and tuple(fixed) != (window, window):
        raise ModelError(f"model takes fixed {fixed[0]}×{fixed[1]} inputs but the window is {window}×{window}")
    height, width = image_u8.shape[:2]
    h, w = scaled_size(height, scale), scaled_size(width, scale)
    with timed(timings, "resize"):
        scaled = resize(image_u8, h, w)
    for axes in FLIP_AXES[flips]:
        cell, boundary = _window_maps(np.flip(scaled, axes) if axes else scaled, runner, cfg, stride, timings)
        yield (np.flip(cell, axes), np.flip(boundary, axes)) if axes else (cell, boundary)


def restore_size(
    maps: tuple[np.ndarray, np.ndarray], height: int, width: int, timings: dict[str, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A (cell, boundary) pair resized back to the image's height × width."""
    with timed(timings, "resize"):
        return resize(maps[0], height, width), resize(maps[1], height, width)


def fuse(
    maps: Iterable[tuple[np.ndarray, np.ndarray]],
    how: str,
    timings: dict[str, float] | None = None,
    *,
    owned: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-wise maximum ("max") or mean ("mean") of (cell, boundary) map pairs, taken one pair at a time.

    The inputs are not modified (the first pair is copied), so the same maps can be fused several ways; with
    `owned` the caller hands over freshly computed float32 maps and the first pair becomes the result in place,
    saving a copy of each map on the prediction path.
    """
    check_choice("fusion", how, FUSIONS)
    cell = boundary = None
    count = 0
    for cell_i, boundary_i in maps:
        with timed(timings, "fuse"):
            if cell is None or boundary is None:
                cell = np.asarray(cell_i, np.float32) if owned else np.array(cell_i, np.float32)
                boundary = np.asarray(boundary_i, np.float32) if owned else np.array(boundary_i, np.float32)
            elif how == "max":
                np.maximum(cell, cell_i, out=cell)
                np.maximum(boundary, boundary_i, out=boundary)
            else:
                cell += cell_i
                boundary += boundary_i
        count += 1
    if cell is None or boundary is None:
        raise ValueError("at least one pair of maps is needed")
    if how == "mean" and count > 1:
        cell /= count
        boundary /= count
    return cell, boundary


def predict_maps(
    image_u8: np.ndarray, runner: Runner, plan: Plan, cfg: InferenceConfig, timings: dict[str, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Cell and boundary probability maps (float32 H×W, original size): at each of the plan's scales the mean of
    its flipped views (taken at the scaled size, then resized back), the scales fused by `cfg.fusion` (one scale:
    its maps as they are)."""
    if len(plan.scales) == 0:
        raise ValueError("at least one scale is needed")
    height, width = image_u8.shape[:2]
    per_scale = (
        restore_size(
            fuse(scale_views(image_u8, runner, scale, cfg, stride=plan.stride, flips=plan.flips, timings=timings),
                 "mean", timings, owned=True),
            height, width, timings)
        for scale in plan.scales
    )
    return fuse(per_scale, cfg.fusion, timings, owned=True)
