"""Planner modes: how much time an image may take for views and scales, named for what a user wants.

- ``fast`` (the default of ``python -m app predict`` and ``mt2``): a lab's folder in minutes on a laptop. No
  time budget to fill: one view at one scale, chosen by the image's estimated cell size. Measured on the real
  validation split against the full plan (docs/SPEED.md, "Modes"; ``python -m benchmarks.modes``).
- ``accurate``: the full plan whatever it costs: the manifest's flipped views at every adaptive scale.
- ``challenge`` (the default of ``predict.sh`` and the container): the full plan cut down to fit the challenge's
  time tolerance (``--budget auto``), views dropped first.

A mode sets plan fields only. It sits between the weights' tuned settings (the manifest) and the command line:
options given there win over the mode, and the manifest's post-processing thresholds apply in every mode.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.config import CLASS_PLAN_FIELDS, IMAGE_CLASSES, InferenceConfig


@dataclass(frozen=True)
class Mode:
    """A named set of InferenceConfig plan fields, with the one-line summary the log and `--help` show;
    `classes`: plan fields (`CLASS_PLAN_FIELDS`) of one kind of image (`IMAGE_CLASSES`) on top of `settings`."""

    name: str
    summary: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    classes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, fields in self.classes.items():
            if kind not in IMAGE_CLASSES or not set(fields) <= set(CLASS_PLAN_FIELDS):
                raise ValueError(f"mode {self.name}: {kind} may set only {', '.join(CLASS_PLAN_FIELDS)}")


# Chosen on the real validation split (docs/SPEED.md, "Modes"): one view at one scale lost 0.03-0.08 F1 per
# source against the challenge plan; two views keep fluorescence images within 0.01, and grey images (phase
# contrast, DIC), whose size estimate is the least sure, need the three scales as well. Stained colour images
# keep all four views: with the stage-11 weights two views lost 0.027 on the tuning split's tissue (0.762
# against 0.789, four views 0.788), and these small tiles cost little. A scaled image up to 2048 px runs in one
# pass (same F1 as windows, fewer pixels through the network).
FAST = Mode(
    "fast",
    "two views at one adaptive scale (four views for stained colour images, three scales for grey ones), "
    "no time budget",
    {"budget": "none", "flips": 2, "adaptive_spread": (1.0,), "one_pass_max_side": 2048},
    {"grey": {"adaptive_spread": (0.8, 1.0, 1.2)}, "stained": {"flips": 4}},
)
ACCURATE = Mode("accurate", "the full plan (every view and scale the weights are tuned for), no time budget",
                {"budget": "none"})
CHALLENGE = Mode("challenge", "the full plan within the challenge's time tolerance (views dropped first)",
                 {"budget": "auto"})
MODES: dict[str, Mode] = {mode.name: mode for mode in (FAST, ACCURATE, CHALLENGE)}
DEFAULT_MODE = FAST.name  # python -m app predict / mt2; predict.sh and the container pass --mode challenge


def mode_config(base: InferenceConfig, name: str) -> InferenceConfig:
    """`base` (defaults with the manifest's tuned settings) with the plan fields of mode `name`; an unknown name
    is a ValueError listing the modes."""
    if name not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {name!r}")
    return base.with_overrides(**MODES[name].settings)


def without_given(table: Mapping[str, Mapping[str, Any]], given: Collection[str]) -> dict[str, dict[str, Any]]:
    """Per-kind settings without the fields the command line sets for every image (`given`); empty kinds go."""
    kept = {kind: {k: v for k, v in fields.items() if k not in given} for kind, fields in table.items()}
    return {kind: fields for kind, fields in kept.items() if fields}


def mode_classes(name: str, given: Collection[str] = ()) -> dict[str, dict[str, Any]]:
    """The per-kind plan fields of mode `name`, without those the command line `given` sets for every image."""
    return without_given(MODES[name].classes, given)


def merge_classes(*tables: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-kind settings of several sources (the manifest's thresholds, the mode's plan fields) as one table."""
    merged: dict[str, dict[str, Any]] = {}
    for table in tables:
        for kind, fields in table.items():
            merged.setdefault(kind, {}).update(fields)
    return {kind: fields for kind, fields in merged.items() if fields}


def describe_mode(name: str) -> str:
    """'mode fast: one view at one adaptive scale, no time budget' for the log."""
    return f"mode {name}: {MODES[name].summary}"


__all__ = ["ACCURATE", "CHALLENGE", "DEFAULT_MODE", "FAST", "MODES", "Mode", "describe_mode", "merge_classes",
           "mode_classes", "mode_config", "without_given"]
