"""Choose how one model's outputs become instances, on labelled images (``python -m app tune``).

MT2's published thresholds (T_cell 0.3, T_seed 0.8, S_min 64 px) were set for the authors' network and the
challenge's cell sizes. Another network, or smaller cells, wants other values: a 64-pixel minimum seed drops
every cell under about 10 px across. Whether flipped views and averaging the scales (instead of MT2's maximum)
help depends on the network too. The model runs once per image at MT2's scales with the most flipped views of
the grid (the expensive part; the views of fewer flips are a prefix of them), then every combination of the
grid is fused, post-processed and scored with the challenge F1, one image at a time so that only one image's
maps are held. The best combination can be stored in the weights' manifest, where `predict` picks it up.

Kinds of image (colour stains, fluorescence, other grey; `app.normalize.image_class`) may want other instance
thresholds than the common best: `class_choices` picks each kind's best setting among those with the common
views and fusion, and keeps it only when it also wins on the kind's images it was not chosen on (two halves,
each chosen on one and scored on the other) by more than the noise of that comparison.

The scales come from each image's diameter estimate, which runs the model and the current common thresholds.
Storing other thresholds moves some estimates, and with them the scales `predict` will run those images at, so
`confirm_scores` scores the stored settings again at the scales they lead to: the figure `predict` will give.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from app.config import CLASS_FIELDS, IMAGE_CLASSES, POSTPROCESS_FIELDS, InferenceConfig, TuneGrid
from app.diameter import choose_scales, size_estimate
from app.errors import InputError
from app.infer import Plan, Runner, fuse, restore_size, scale_views
from app.metric import image_scores, read_labels
from app.normalize import image_class, is_fluorescence, read_normalized
from app.postprocess import drop_small_cells, instance_map

# (cell, boundary) map pairs at the scale's size: one tuple per scale, one pair per flipped view.
ScaleViews = tuple[tuple[tuple[np.ndarray, np.ndarray], ...], ...]


@dataclass(frozen=True)
class Views:
    """One labelled image's ground truth and its (cell, boundary) maps per scale of MT2's plan and flipped view."""

    name: str
    truth: np.ndarray
    per_scale: ScaleViews
    view_scale: float = 1.0  # the plan's model pixels per image pixel (`Plan.view_scale`)
    kind: str = "grey"  # `image_class` of the image

    def fused(self, flips: int, fusion: str) -> tuple[np.ndarray, np.ndarray]:
        """The maps `predict` computes with `flips` views and `fusion` (the same operations, in the same order)."""
        height, width = self.truth.shape
        return fuse((restore_size(fuse(views[:flips], "mean"), height, width) for views in self.per_scale), fusion)


@dataclass(frozen=True)
class Scored:
    """F1 of one image under each candidate setting, in the candidates' order."""

    name: str
    f1: np.ndarray
    kind: str = "grey"  # `image_class` of the image
    scales: tuple[float, ...] = ()  # the scales its maps were computed at


@dataclass(frozen=True)
class Trial:
    """Mean F1 over the images for one setting of the post-processing fields."""

    settings: dict[str, Any]
    f1: float


def planned_scales(rgb_u8: np.ndarray, runner: Runner, cfg: InferenceConfig) -> tuple[float, ...]:
    """The scales `predict` runs a normalised image at with no time budget: adaptive around the diameter estimated
    with `cfg`'s thresholds, or MT2's, as `cfg.scale_mode` says."""
    return tuple(choose_scales(size_estimate(rgb_u8, runner, cfg), is_fluorescence(rgb_u8, cfg), cfg))


def image_views(
    image_path: Path, runner: Runner, cfg: InferenceConfig, flips: int
) -> tuple[ScaleViews, tuple[float, ...], tuple[int, int], str]:
    """Maps of one image as `predict` computes them with no time budget (`planned_scales`), per scale and per
    flipped view at the scale's size; the scales; the image's shape; its kind (`image_class`)."""
    rgb_u8 = read_normalized(image_path, cfg.max_pixels, cfg)
    scales = planned_scales(rgb_u8, runner, cfg)
    per_scale = tuple(tuple(scale_views(rgb_u8, runner, scale, cfg, flips=flips)) for scale in scales)
    return per_scale, scales, rgb_u8.shape[:2], image_class(rgb_u8, cfg)


def parse_grid(values: Iterable[str], grid: TuneGrid = TuneGrid()) -> TuneGrid:
    """`grid` with axes replaced by "field=v1,v2" texts (the values typed like the field's); ValueError names a
    bad one."""
    changes: dict[str, Any] = {}
    for text in values:
        name, _, raw = text.partition("=")
        name = name.strip()
        if not hasattr(grid, name) or not raw:
            raise ValueError(f"--grid {text}: expected FIELD=V1,V2,... with FIELD one of "
                             f"{', '.join(f.name for f in fields(grid))}")
        current = getattr(grid, name)
        kind = type(current[0]) if isinstance(current, tuple) and current else type(current)
        try:
            parsed = tuple(kind(v.strip()) for v in raw.split(","))
        except ValueError as exc:
            raise ValueError(f"--grid {text}: {exc}") from None
        changes[name] = parsed if isinstance(current, tuple) else parsed[0]
    return replace(grid, **changes)


def grid_settings(grid: TuneGrid) -> list[dict[str, Any]]:
    """Every combination of the grid in which the seed threshold is at least the cell threshold.

    Fewer flips come first, so that of equally good settings the cheapest is ranked first.
    """
    combos = itertools.product(
        sorted(grid.flips), grid.fusions, grid.cell_thresholds, grid.seed_thresholds, grid.min_seed_areas,
        grid.seed_split_heights, grid.min_area_ratios,
    )
    settings: list[dict[str, Any]] = [dict(zip(POSTPROCESS_FIELDS, combo)) for combo in combos]
    return [s for s in settings if s["seed_threshold"] >= s["cell_threshold"]]


def current_settings(cfg: InferenceConfig) -> dict[str, Any]:
    """The config's own post-processing values, keyed like a grid setting."""
    return {name: getattr(cfg, name) for name in POSTPROCESS_FIELDS}


def candidate_settings(
    cfg: InferenceConfig, grid: TuneGrid = TuneGrid(), extra: Iterable[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    """The grid's settings, then the config's own (the reference) and `extra` (the settings stored now) where the
    grid lacks them."""
    candidates = grid_settings(grid)
    for setting in (current_settings(cfg), *extra):
        if setting not in candidates:
            candidates.append(setting)
    return candidates


def per_kind(common: dict[str, Any], classes: Mapping[str, Mapping[str, Any]]) -> Callable[[str], dict[str, Any]]:
    """The setting an image of each kind gets: `common`, with the kind's own thresholds (`classes`) over it."""
    return lambda kind: {**common, **classes.get(kind, {})}


def grid_scores(
    scored: Iterable[Scored], candidates: list[dict[str, Any]], setting_for: Callable[[str], dict[str, Any]]
) -> np.ndarray:
    """Each image's grid score under the setting of its kind (a candidate)."""
    return np.array([image.f1[candidates.index(setting_for(image.kind))] for image in scored])


def score_views(views: Views, candidates: list[dict[str, Any]], cfg: InferenceConfig) -> np.ndarray:
    """Challenge F1 of one image under every candidate; each (flips, fusion) pair is fused only once, and the
    watershed is reused by consecutive candidates that differ only in the small-cell filter (the grid's last
    axis)."""
    scores = np.zeros(len(candidates))
    fused: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
    last: tuple[Any, np.ndarray] | None = None
    for i, settings in enumerate(candidates):
        key = (int(settings["flips"]), str(settings["fusion"]))
        if key not in fused:
            fused[key] = views.fused(*key)
        cell, boundary = fused[key]
        chosen = cfg.with_overrides(**settings)
        watershed_key = chosen.with_overrides(min_area_ratio=0.0)
        if last is None or last[0] != watershed_key:
            last = (watershed_key, instance_map(cell, boundary, watershed_key, views.view_scale))
        scores[i] = image_scores(views.truth, drop_small_cells(last[1], chosen.min_area_ratio)).f1
    return scores


def collect_scores(
    pairs: Iterable[tuple[Path, Path]],
    runner: Runner,
    cfg: InferenceConfig,
    candidates: list[dict[str, Any]],
    on_error: Callable[[str], None] = lambda message: None,
) -> list[Scored]:
    """Scores of every readable pair; a pair that cannot be read or whose shapes differ is reported and skipped."""
    flips = max(int(settings["flips"]) for settings in candidates)
    scored = []
    for image_path, label_path in pairs:
        try:
            truth = read_labels(label_path)
            per_scale, scales, shape, kind = image_views(image_path, runner, cfg, flips)
        except (InputError, OSError, ValueError) as exc:
            on_error(f"{image_path.name}: {exc}")
            continue
        if truth.shape != shape:
            on_error(f"{image_path.name}: label shape {truth.shape} differs from the image's {shape}")
            continue
        views = Views(image_path.stem, truth, per_scale, Plan(scales, cfg.stride).view_scale, kind)
        scored.append(Scored(image_path.stem, score_views(views, candidates, cfg), kind, scales))
    return scored


@dataclass(frozen=True)
class Confirmation:
    """F1 of each scored image under the settings as stored, at the scales they lead `predict` to."""

    f1: np.ndarray
    moved: int  # images whose scales the stored thresholds changed (computed again)


def confirm_scores(
    pairs: Iterable[tuple[Path, Path]],
    runner: Runner,
    cfg: InferenceConfig,
    scored: Iterable[Scored],
    candidates: list[dict[str, Any]],
    setting_for: Callable[[str], dict[str, Any]],
) -> Confirmation:
    """Scores of the stored settings as `predict` will run them: each image's scales planned again with `cfg`
    (the stored common settings, as `predict` estimates sizes); an image whose scales did not move keeps its grid
    score under `setting_for(kind)` (a candidate), the others are computed and scored again at their new scales."""
    by_name = {image.stem: (image, label) for image, label in pairs}
    f1, moved = [], 0
    for image in scored:
        setting = setting_for(image.kind)
        image_path, label_path = by_name[image.name]
        rgb_u8 = read_normalized(image_path, cfg.max_pixels, cfg)
        scales = planned_scales(rgb_u8, runner, cfg)
        if scales == image.scales:
            f1.append(float(grid_scores([image], candidates, setting_for)[0]))
            continue
        moved += 1
        per_scale = tuple(tuple(scale_views(rgb_u8, runner, scale, cfg, flips=int(setting["flips"])))
                          for scale in scales)
        views = Views(image.name, read_labels(label_path), per_scale, Plan(scales, cfg.stride).view_scale, image.kind)
        f1.append(float(score_views(views, [setting], cfg)[0]))
    return Confirmation(np.array(f1), moved)


def rank(candidates: list[dict[str, Any]], scored: list[Scored]) -> list[Trial]:
    """Candidates with their mean F1 over the images, best first; ties keep the candidates' order."""
    if not scored:
        raise ValueError("no labelled images to tune on")
    means = np.mean([s.f1 for s in scored], axis=0)
    trials = [Trial(settings, float(f1)) for settings, f1 in zip(candidates, means)]
    return sorted(trials, key=lambda trial: -trial.f1)


@dataclass(frozen=True)
class ClassChoice:
    """A kind of image's own best thresholds against the common setting, and whether they are kept."""

    kind: str
    images: int
    settings: dict[str, Any]  # the `CLASS_FIELDS` of the kind's best candidate
    common_f1: float  # mean F1 of the kind's images under the common best setting
    own_f1: float  # ... under the kind's best (chosen on all of them: optimistic)
    held_out_gain: float  # mean per-image gain on the half each choice was not made on
    noise: float  # standard error of those per-image gains
    kept: bool


def class_choices(
    candidates: list[dict[str, Any]], scored: list[Scored], best: dict[str, Any], grid: TuneGrid = TuneGrid()
) -> list[ClassChoice]:
    """For each kind of image with at least `grid.class_min_images` scored images: its best thresholds among the
    candidates with `best`'s views and fusion, kept when the gain they bring on held-out images (the kind's
    images split alternately in two halves; each half's choice scored on the other) is positive and above
    `grid.class_noise` standard errors."""
    common = candidates.index(best)
    same = [i for i, c in enumerate(candidates)
            if c["flips"] == best["flips"] and c["fusion"] == best["fusion"]]
    choices = []
    for kind in IMAGE_CLASSES:
        f1 = np.array([s.f1 for s in scored if s.kind == kind])
        if len(f1) < grid.class_min_images:
            continue
        halves = (f1[0::2], f1[1::2])
        gains = np.concatenate([
            halves[1 - h][:, pick] - halves[1 - h][:, common]
            for h in (0, 1)
            for pick in [same[int(np.argmax(halves[h][:, same].mean(axis=0)))]]
        ])
        noise = float(gains.std(ddof=1) / math.sqrt(len(gains)))
        gain = float(gains.mean())
        own = same[int(np.argmax(f1[:, same].mean(axis=0)))]
        choices.append(ClassChoice(
            kind, len(f1), {name: candidates[own][name] for name in CLASS_FIELDS}, float(f1[:, common].mean()),
            float(f1[:, own].mean()), gain, noise, gain > 0 and gain > grid.class_noise * noise and own != common,
        ))
    return choices


def choice_line(choice: ClassChoice) -> str:
    """One line of `app tune` per kind of image: its own thresholds, the gains, the verdict."""
    fields = " ".join(f"{name} {value:g}" for name, value in choice.settings.items())
    verdict = "kept" if choice.kept else "not kept (within noise)"
    return (f"{choice.kind} ({choice.images} images): common {choice.common_f1:.4f}, own {choice.own_f1:.4f} "
            f"with {fields}; held-out gain {choice.held_out_gain:+.4f} ± {choice.noise:.4f}: {verdict}")


def trials_table(trials: list[Trial], reference: dict[str, Any], top: int = 10) -> list[str]:
    """The lines `app tune` prints: the `top` settings by mean F1, and `reference` (MT2's defaults) marked,
    wherever it ranks."""
    lines = [f"{'flips':>5} {'fusion':>6} {'T_cell':>7} {'T_seed':>7} {'S_min':>6} {'split':>5} {'S_rel':>5} "
             f"{'mean F1':>8}"]
    for trial in trials[:top] + [t for t in trials[top:] if t.settings == reference]:
        s = trial.settings
        mark = "  (MT2's defaults)" if s == reference else ""
        lines.append(f"{s['flips']:>5} {s['fusion']:>6} {s['cell_threshold']:>7g} {s['seed_threshold']:>7g} "
                     f"{s['min_seed_area']:>6} {s['seed_split_height']:>5g} {s['min_area_ratio']:>5g} "
                     f"{trial.f1:>8.4f}{mark}")
    return lines


__all__ = [
    "ClassChoice", "Confirmation", "Scored", "Trial", "Views", "candidate_settings", "choice_line", "class_choices",
    "collect_scores", "confirm_scores", "current_settings", "grid_scores", "grid_settings", "image_views",
    "parse_grid", "per_kind", "planned_scales", "rank", "score_views", "trials_table",
]
