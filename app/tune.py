"""Choose the post-processing thresholds for one model on labelled images (``python -m app tune``).

MT2's published thresholds (T_cell 0.3, T_seed 0.8, S_min 64 px) were set for the authors' network and the
challenge's cell sizes. Another network, or smaller cells, wants other values: a 64-pixel minimum seed drops
every cell under about 10 px across. The model's fused maps are computed once per image (the expensive part),
then every combination of the grid is post-processed and scored with the challenge F1; the best combination
can be stored in the weights' manifest, where `predict` picks it up.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from app.config import POSTPROCESS_FIELDS, InferenceConfig, TuneGrid
from app.errors import InputError
from app.infer import predict_maps
from app.metric import image_scores, read_labels
from app.normalize import is_fluorescence, read_normalized
from app.plan import modality_scales
from app.postprocess import instance_map
from app.reader import list_inputs
from app.writer import output_name


@dataclass(frozen=True)
class Maps:
    """One labelled image's ground truth and the model's fused maps at MT2's full plan."""

    name: str
    truth: np.ndarray
    cell: np.ndarray
    boundary: np.ndarray


@dataclass(frozen=True)
class Trial:
    """Mean F1 over the images for one setting of the post-processing fields."""

    settings: dict[str, float | int]
    f1: float


def labelled_pairs(images: Path, labels: Path) -> list[tuple[Path, Path]]:
    """(image, <name>_label.tiff) pairs of two folders; images without a label file are left out."""
    found, _ = list_inputs(images)
    pairs = [(path, labels / output_name(path)) for path in found]
    return [(image, label) for image, label in pairs if label.is_file()]


def fused_maps(image_path: Path, runner, cfg: InferenceConfig) -> tuple[np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    """Cell and boundary maps of one image exactly as `predict` computes them at MT2's full plan."""
    rgb_u8 = read_normalized(image_path, cfg.max_pixels, cfg)
    scales = modality_scales(is_fluorescence(rgb_u8, cfg), cfg)
    return predict_maps(rgb_u8, runner, scales, cfg)


def collect_maps(
    pairs: Iterable[tuple[Path, Path]],
    runner,  # type: ignore[no-untyped-def]
    cfg: InferenceConfig,
    on_error: Callable[[str], None] = lambda message: None,
) -> list[Maps]:
    """Maps of every readable pair; a pair that cannot be read or whose shapes differ is reported and skipped."""
    collected = []
    for image_path, label_path in pairs:
        try:
            truth = read_labels(label_path)
            cell, boundary = fused_maps(image_path, runner, cfg)
        except (InputError, OSError, ValueError) as exc:
            on_error(f"{image_path.name}: {exc}")
            continue
        if truth.shape != cell.shape:
            on_error(f"{image_path.name}: label shape {truth.shape} differs from the image's {cell.shape}")
            continue
        collected.append(Maps(image_path.stem, truth, cell, boundary))
    return collected


def grid_settings(grid: TuneGrid) -> list[dict[str, float | int]]:
    """Every combination of the grid in which the seed threshold is at least the cell threshold."""
    combos = itertools.product(grid.cell_thresholds, grid.seed_thresholds, grid.min_seed_areas)
    return [dict(zip(POSTPROCESS_FIELDS, combo)) for combo in combos if combo[1] >= combo[0]]


def score_settings(maps: list[Maps], settings: dict[str, float | int], cfg: InferenceConfig) -> float:
    """Mean challenge F1 over `maps` with `settings` replacing the config's post-processing fields."""
    trial_cfg = cfg.with_overrides(**settings)
    return float(np.mean([image_scores(m.truth, instance_map(m.cell, m.boundary, trial_cfg)).f1 for m in maps]))


def current_settings(cfg: InferenceConfig) -> dict[str, float | int]:
    """The config's own post-processing values, keyed like a grid setting."""
    return {name: getattr(cfg, name) for name in POSTPROCESS_FIELDS}


def sweep(maps: list[Maps], cfg: InferenceConfig, grid: TuneGrid = TuneGrid()) -> list[Trial]:
    """Score every grid setting (and the config's own), best first; ties keep the grid's order."""
    if not maps:
        raise ValueError("no labelled images to tune on")
    candidates = grid_settings(grid)
    current = current_settings(cfg)
    if current not in candidates:
        candidates.append(current)
    trials = [Trial(settings, score_settings(maps, settings, cfg)) for settings in candidates]
    return sorted(trials, key=lambda trial: -trial.f1)


__all__ = ["Maps", "Trial", "collect_maps", "current_settings", "fused_maps", "grid_settings", "labelled_pairs", "score_settings", "sweep"]
