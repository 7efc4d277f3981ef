"""Every tunable constant of the inference app, named once.

`InferenceConfig` holds what a user may change from the command line; `CHALLENGE` holds the fixed rules
of the NeurIPS 2022 Cell Segmentation challenge (tolerance, metric) and `CONTRACT` the ONNX model contract.
Other modules take a config object as an argument rather than reading globals, so tests can vary any value.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class InferenceConfig:
    """Settings of one prediction run; defaults reproduce MT2's published inference."""

    # Normalisation: per-channel percentiles of the non-zero pixels, mapped to uint8 0..255.
    norm_low_percentile: float = 1.0
    norm_high_percentile: float = 99.0
    # Percentiles of larger images come from a regular subsample of at most this many pixels per channel.
    norm_sample_pixels: int = 4_000_000
    # Modality plan: fluorescence (red channel all zero) at 1.5x alone, everything else at 0.8/1.0/1.2x.
    scales: tuple[float, ...] = (0.8, 1.0, 1.2)
    fluorescence_scales: tuple[float, ...] = (1.5,)
    # MT2 only trusts the empty-red-channel rule below this side length (whole-slide images are not fluorescence).
    fluorescence_max_side: int = 5000
    # Sliding windows.
    window: int = 512
    stride: int = 256
    batch_size: int = 4
    # Post-processing thresholds (paper section 2.3: T_cell, T_seed, S_min).
    cell_threshold: float = 0.3
    seed_threshold: float = 0.8
    min_seed_area: int = 64
    # Inputs above this many pixels are refused (10,000 x 10,000 slides pass).
    max_pixels: int = 150_000_000
    # Whole-slide path: images above this many pixels are processed in tiles with a halo.
    tile_threshold_pixels: int = 16_000_000
    tile_size: int = 4096
    tile_halo: int = 256
    # Threads post-processing finished tiles while the model runs on the next (0: all on the calling thread).
    tile_workers: int = 1
    # Tolerance-aware planning: "auto", "none", or a number of seconds.
    budget: str = "auto"
    budget_safety: float = 0.75
    # Execution: "auto" (CUDA + fp16 when available, else CPU + fp32), "cuda" or "cpu".
    device: str = "auto"
    threads: int = 0  # 0 lets ONNX Runtime choose

    def with_overrides(self, **changes: Any) -> "InferenceConfig":
        """Copy with the given fields changed, ignoring None (unset command-line options)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


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
    fp16_file: str = "mt2.fp16.onnx"
    fp32_file: str = "mt2.fp32.onnx"
    manifest_file: str = "manifest.json"


CHALLENGE = ChallengeRules()
CONTRACT = ModelContract()
