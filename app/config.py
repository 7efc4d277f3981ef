"""Every tunable constant of the inference app, named once.

`InferenceConfig` holds what a user may change from the command line; `CHALLENGE` holds the fixed rules
of the NeurIPS 2022 Cell Segmentation challenge (tolerance, metric) and `CONTRACT` the ONNX model contract.
`TuneGrid` is the search space of `python -m app tune` over the `POSTPROCESS_FIELDS`. `FLIP_AXES` names the
test-time flips once; `EXTRA_SUFFIXES` and `OVERLAY_PALETTE` the optional outputs of `predict` (app/extras.py).
Other modules take a config object as an argument rather than reading globals, so tests can vary any value.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

# Test-time views by count: the axes each view is flipped along (() is the image itself). Each count's views
# start with the smaller count's, so a run at 4 flips also holds the views of 1 and 2 (`python -m app tune`
# scores all three from one pass).
FLIP_AXES: dict[int, tuple[tuple[int, ...], ...]] = {1: ((),), 2: ((), (1,)), 4: ((), (1,), (0,), (0, 1))}
FUSIONS: tuple[str, ...] = ("max", "mean")
SCALE_MODES: tuple[str, ...] = ("adaptive", "fixed")
# Optional outputs of `predict`, one option each (--overlay, --rois, --geojson, --measure), written in this order
# beside the label file: the input's name up to its first dot, then this suffix (docs/APP.md, "Extra outputs").
EXTRA_SUFFIXES: dict[str, str] = {
    "overlay": "_overlay.png",
    "rois": "_rois.zip",
    "geojson": ".geojson",
    "measure": "_cells.csv",
}
# Outline colours of the overlay, cell label modulo their count: saturated, distinct, visible on dark
# fluorescence and on light brightfield backgrounds alike.
OVERLAY_PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40), (255, 105, 180),
)


def check_choice(name: str, value: Any, allowed: Any) -> None:
    """ValueError naming the setting unless `value` is one of `allowed` (True is not the number 1 here)."""
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def _opt(default: Any, help: str) -> Any:
    """A config field with its command-line help text (`python -m app predict --help` shows it)."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class InferenceConfig:
    """Settings of one prediction run; defaults reproduce MT2's published inference."""

    norm_low_percentile: float = _opt(1.0, "low percentile of each channel's non-zero pixels, mapped to 0")
    norm_high_percentile: float = _opt(99.0, "high percentile of each channel's non-zero pixels, mapped to 255")
    norm_sample_pixels: int = _opt(4_000_000, "percentiles of larger images come from a regular subsample of this size")
    scales: tuple[float, ...] = _opt((0.8, 1.0, 1.2), "scales of non-fluorescence images")
    fluorescence_scales: tuple[float, ...] = _opt((1.5,), "scales of fluorescence images (fixed scale mode)")
    fluorescence_max_side: int = _opt(5000, "fluorescence is only recognised below this side length")
    fluorescence_grey_median: float = _opt(50.0, "a grey image whose normalised median is below this (0..255) is "
                                           "fluorescence (dark background)")
    scale_mode: str = _opt("adaptive", "adaptive: scales from each image's estimated object diameter (a quick "
                           "first pass); fixed: MT2's per-modality scales")
    diameter: float = _opt(0.0, "typical object diameter in pixels, if known: sets the scales and skips the "
                           "estimate (0: estimate it)")
    target_diameter: float = _opt(30.0, "diameter (px) at which the model sees objects in adaptive mode")
    fluorescence_target_diameter: float = _opt(0.0, "the same for fluorescence images (px; 0: --target-diameter)")
    adaptive_spread: tuple[float, ...] = _opt((0.8, 1.0, 1.2), "adaptive scales, as factors of target / diameter")
    adaptive_scale_range: tuple[float, ...] = _opt((0.25, 4.0), "adaptive scales are clipped to [low, high]")
    estimate_side: int = _opt(512, "side (px, as the model sees it) of the central crop of the diameter estimate")
    estimate_scales: tuple[float, ...] = _opt((0.125, 0.25, 0.5, 1.0, 2.0), "scales of the estimate's looks, "
                                              "taken coarse to fine until one is accepted")
    estimate_min_view: float = _opt(10.0, "a look counts only when its objects reach the model at least this "
                                    "large (px): coarser looks merge small objects into blobs")
    estimate_agreement: float = _opt(1.4, "a look is accepted when the next finer look's estimate agrees within "
                                     "this factor (objects merged or split at a wrong scale keep their size in "
                                     "the model's view, so their size in the image changes from look to look)")
    estimate_min_objects: int = _opt(3, "fewer objects than this in the estimate crop fall back to fixed scales")
    estimate_budget_share: float = _opt(0.25, "the estimate runs only when its cost fits this share of the budget")
    fusion: str = _opt("max", "how the scales' maps are combined: max (MT2's pixel-wise maximum) or mean")
    flips: int = _opt(1, "flipped views averaged at every scale: 1 (none, MT2), 2 (adds the left-right mirror) or 4 "
                      "(adds the up-down mirror and both); a short time budget drops them before anything else")
    window: int = _opt(512, "sliding-window side in pixels (the model's fixed input size)")
    stride: int = _opt(256, "sliding-window step in pixels")
    one_pass_max_side: int = _opt(1024, "a scaled image (or whole-slide tile) with no side above this runs through "
                                  "the model as one input padded to a multiple of 32, not as overlapping windows "
                                  "(more context, no seams, fewer pixels); 0: always windows")
    batch_size: int = _opt(4, "windows per model call")
    window_sigma: float = _opt(0.125, "overlapping windows are averaged with Gaussian weights of this sigma "
                               "(fraction of the window), trusting window centres over edges; 0: plain average")
    cell_threshold: float = _opt(0.3, "T_cell: foreground where cell - boundary exceeds it")
    seed_threshold: float = _opt(0.8, "T_seed: seeds where cell - boundary exceeds it")
    min_seed_area: int = _opt(64, "S_min: smaller seeds are dropped (pixels)")
    seed_split_height: float = _opt(0.0, "a seed holding several maxima of the smoothed cell - boundary map that "
                                    "rise this much above the saddles between them is split, one seed per "
                                    "maximum (touching cells with a faint boundary); 0: MT2's seeds")
    seed_split_sigma: float = _opt(2.0, "Gaussian sigma (px as the model sees the image) of the smoothing "
                                   "before the seed split's maxima are found")
    min_area_ratio: float = _opt(0.0, "cells smaller than this share of the image's median cell area are dropped "
                                 "(debris, slivers cut off a cell); 0: none (MT2)")
    max_pixels: int = _opt(150_000_000, "inputs with more pixels are refused")
    tile_threshold_pixels: int = _opt(16_000_000, "larger images take the tiled whole-slide path")
    tile_size: int = _opt(4096, "core side of a whole-slide tile in pixels")
    tile_halo: int = _opt(256, "context around each whole-slide tile in pixels")
    tile_workers: int = _opt(1, "threads post-processing tiles while the model runs (0: none)")
    slide_threshold_pixels: int = _opt(150_000_000, "tiled TIFFs (BigTIFF, OME-TIFF, pyramidal) with more pixels "
                                       "are streamed from the file tile by tile, with no pixel cap (0: every "
                                       "tiled TIFF); other images keep the in-memory path")
    slide_tile_size: int = _opt(768, "core side of a streamed slide's tiles in pixels")
    slide_tile_halo: int = _opt(128, "context around each streamed tile in pixels")
    slide_overview_pixels: int = _opt(4_000_000, "pixels of a streamed slide's overview (a pyramid level, or a "
                                      "decimated read), which finds the tissue and sets the normalisation")
    slide_tissue_contrast: float = _opt(20.0, "an overview pixel is tissue when a normalised channel differs this "
                                        "much (0..255) from the glass; tiles without tissue are written as "
                                        "background without running the model (0: segment every tile)")
    slide_write_tile: int = _opt(256, "tile side of a streamed slide's label BigTIFF (a multiple of 16)")
    slide_pyramid_levels: int = _opt(0, "sub-resolution levels (0-4, each half the previous) written into a "
                                     "streamed slide's label BigTIFF")
    slide_threads: int = _opt(2, "tiles of a streamed slide in flight at once on the threaded scheduler (the model "
                              "takes one at a time; the others are read and post-processed meanwhile)")
    slide_resume: bool = _opt(True, "continue a streamed slide from the progress record an interrupted run left "
                              "beside its output, when input, model and settings are the same")
    scheduler: str = _opt("threads", "where a streamed slide's tiles run: threads (in this process), or the address "
                          "of a running dask.distributed scheduler (tcp://host:8786), whose workers must see the "
                          "input and output folders")
    workers: int = _opt(0, "start a local Dask cluster of this many worker processes for streamed slides "
                        "(0: --scheduler decides)")
    budget: str = _opt("auto", "time budget per image: auto (challenge tolerance), none, or seconds")
    budget_safety: float = _opt(0.75, "fraction of the budget the planner may fill")
    device: str = _opt("auto", "auto (CUDA + fp16 when available, else CPU + fp32), cuda or cpu")
    precision: str = _opt("auto", "model file taken from a weights folder: auto (CUDA: fp16; CPU: int8 when the "
                          "manifest lists mt2.int8.onnx and the CPU has VNNI, else fp32), fp32, fp16 or int8")
    threads: int = _opt(0, "ONNX Runtime threads (0: its default)")
    overlay_max_side: int = _opt(4096, "--overlay: larger images are drawn on a copy subsampled (nearest) to this "
                                 "longer side (0: always full size)")

    def __post_init__(self) -> None:
        check_choice("fusion", self.fusion, FUSIONS)
        check_choice("flips", self.flips, FLIP_AXES)
        check_choice("scale_mode", self.scale_mode, SCALE_MODES)
        if self.diameter < 0 or self.target_diameter <= 0 or self.fluorescence_target_diameter < 0:
            raise ValueError("diameter and fluorescence_target_diameter must be >= 0, target_diameter > 0")
        if len(self.adaptive_scale_range) != 2 or not 0 < self.adaptive_scale_range[0] <= self.adaptive_scale_range[1]:
            raise ValueError("adaptive_scale_range needs two values 0 < low <= high")
        if not self.adaptive_spread or min(self.adaptive_spread) <= 0:
            raise ValueError("adaptive_spread needs positive factors")
        if not self.estimate_scales or min(self.estimate_scales) <= 0:
            raise ValueError("estimate_scales needs positive scales")
        if self.estimate_agreement < 1:
            raise ValueError("estimate_agreement must be >= 1")
        if self.seed_split_height < 0 or self.seed_split_sigma < 0 or not 0 <= self.min_area_ratio < 1:
            raise ValueError("seed_split_height and seed_split_sigma must be >= 0, min_area_ratio in [0, 1)")
        if self.overlay_max_side < 0:
            raise ValueError("overlay_max_side must be >= 0")
        if self.slide_tile_size <= 0 or self.slide_tile_halo < 0 or self.slide_overview_pixels <= 0:
            raise ValueError("slide_tile_size and slide_overview_pixels must be > 0, slide_tile_halo >= 0")
        if self.slide_write_tile <= 0 or self.slide_write_tile % 16:
            raise ValueError("slide_write_tile must be a positive multiple of 16 (TIFF tiles)")
        if self.slide_tissue_contrast < 0 or not 0 <= self.slide_pyramid_levels <= 4:
            raise ValueError("slide_tissue_contrast must be >= 0 and slide_pyramid_levels in 0..4")
        if self.slide_threads < 1 or self.workers < 0:
            raise ValueError("slide_threads must be >= 1 and workers >= 0")
        if self.workers > 0 and self.scheduler != "threads":
            raise ValueError("give --workers (a local cluster) or --scheduler ADDRESS (a running one), not both")

    def with_overrides(self, **changes: Any) -> "InferenceConfig":
        """Copy with the given fields changed, ignoring None (unset command-line options)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


# The fields a weights manifest may set for its model (found by `python -m app tune`): how the network's
# outputs are combined (flipped views, scales) and turned into instances (thresholds). Options given on the
# command line still win.
POSTPROCESS_FIELDS: tuple[str, ...] = (
    "flips", "fusion", "cell_threshold", "seed_threshold", "min_seed_area", "seed_split_height", "min_area_ratio"
)
# What a manifest may set besides: the object sizes at which this model segments best (adaptive scales; one for
# fluorescence, one for the rest), chosen by measurement for each model and recorded by `python -m app tune
# --write` with the settings they were tuned at.
MANIFEST_FIELDS: tuple[str, ...] = (*POSTPROCESS_FIELDS, "target_diameter", "fluorescence_target_diameter")
# Kinds of image the channel rule tells apart (`app.normalize.image_class`): colour stains (three different
# signals: H&E, brightfield RGB), fluorescence, and every other grey image (phase contrast, DIC). Each may have
# its own instance thresholds (`CLASS_FIELDS`) in the manifest's `postprocess.classes` table, chosen by
# `python -m app tune` on that kind's own tuning images; views and fusion stay common (they shape the budget).
IMAGE_CLASSES: tuple[str, ...] = ("stained", "fluorescence", "grey")
CLASS_FIELDS: tuple[str, ...] = ("cell_threshold", "seed_threshold", "min_seed_area", "seed_split_height",
                                 "min_area_ratio")
# The plan fields a planner mode (`app.modes`) may set for one kind of image: views and adaptive scales.
CLASS_PLAN_FIELDS: tuple[str, ...] = ("flips", "adaptive_spread", "scales")


@dataclass(frozen=True)
class TuneGrid:
    """Values `python -m app tune` tries for each post-processing field (combinations with T_seed < T_cell
    are skipped); the config's own values are always scored too, as the reference."""

    flips: tuple[int, ...] = (1, 2, 4)
    fusions: tuple[str, ...] = FUSIONS
    cell_thresholds: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    seed_thresholds: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
    min_seed_areas: tuple[int, ...] = (4, 8, 16, 32, 64)
    seed_split_heights: tuple[float, ...] = (0.0, 0.15)
    min_area_ratios: tuple[float, ...] = (0.0, 0.2)
    # A kind of image (IMAGE_CLASSES) gets thresholds of its own only with at least this many tuning images, and
    # only when its best setting, chosen on one half of them and scored on the other (both ways), beats the
    # common setting there by more than `class_noise` standard errors of the per-image differences.
    class_min_images: int = 6
    class_noise: float = 2.0


@dataclass(frozen=True)
class ChallengeRules:
    """Fixed conventions of the challenge's timing script and F1 evaluation."""

    tolerance_seconds: float = 10.0
    tolerance_pixels: float = 1_000_000.0
    match_iou: float = 0.5
    border_width: int = 2
    tiled_eval_pixels: int = 25_000_000
    eval_tile: int = 2000
    output_suffix: str = "_label.tiff"
    image_extensions: tuple[str, ...] = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass(frozen=True)
class ModelContract:
    """Names and layout of the ONNX model the app runs (see README, 'Model contract')."""

    input_name: str = "image"
    output_names: tuple[str, ...] = ("cls", "cell", "boundary")
    input_channels: int = 3
    cls_channels: int = 3
    size_multiple: int = 32  # input heights and widths the network takes (five 2x downsamplings)
    fp16_file: str = "mt2.fp16.onnx"
    fp32_file: str = "mt2.fp32.onnx"
    manifest_file: str = "manifest.json"


CHALLENGE = ChallengeRules()
CONTRACT = ModelContract()
