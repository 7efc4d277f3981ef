"""Object size estimate and adaptive scales: accuracy on drawn images of known size, overrides, the budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.config import InferenceConfig
from app.diameter import (
    ESTIMATED,
    FIXED,
    GIVEN,
    SizeEstimate,
    adaptive_scales,
    central_crop,
    choose_scales,
    describe_scale_rule,
    equivalent_diameters,
    estimate_diameter,
    label_diameter,
    median_diameter,
    modality_scales,
    pick_estimate,
    size_estimate,
    target_diameter,
)
from app.plan import Costs, Planner, choose_plan
from app.runner import ModelRunner
from tests.onnx_models import contract_model

CFG = InferenceConfig(min_seed_area=4, window=128, stride=64, batch_size=4)


def discs(diameter: float, seed: int = 0) -> np.ndarray:
    """Bright discs of one diameter on a dark, slightly noisy background, as uint8 RGB."""
    rng = np.random.default_rng(seed)
    side = int(max(256, diameter * 9))
    image = np.full((side, side), 20.0)
    taken = np.zeros((side, side), bool)
    yy, xx = np.mgrid[:side, :side]
    r = diameter / 2
    for _ in range(400):
        cy, cx = rng.uniform(r + 2, side - r - 2, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        grown = (yy - cy) ** 2 + (xx - cx) ** 2 <= (r + 3) ** 2
        if not taken[grown].any():
            image[disc] = 200.0
            taken |= disc
    image += rng.normal(0, 3, image.shape)
    return np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def test_equivalent_and_median_diameters() -> None:
    labels = np.zeros((40, 40), np.int32)
    labels[5:9, 5:9] = 1  # 16 px: 4.51
    labels[15:25, 15:25] = 2  # 100 px: 11.28
    labels[0:3, 30:33] = 3  # touches the border: left out of the median
    assert equivalent_diameters(labels)[:2] == pytest.approx([4.514, 11.284], abs=1e-3)
    assert median_diameter(labels, 2) == (pytest.approx((4.514 + 11.284) / 2, abs=1e-3), 2)
    assert median_diameter(labels, 3) == (None, 2)
    assert central_crop(np.zeros((10, 30)), 8).shape == (8, 8)
    assert central_crop(np.zeros((10, 30)), 20).shape == (10, 20)


def test_label_diameter_falls_back_to_objects_on_the_border() -> None:
    labels = np.zeros((40, 40), np.int32)
    assert label_diameter(labels) is None
    labels[0:10, 0:10] = 1  # every object touches the border: their own median
    labels[30:40, 20:40] = 2
    assert label_diameter(labels) == pytest.approx(float(np.median(equivalent_diameters(labels))))
    labels[15:19, 15:19] = 3  # one inner object decides
    assert label_diameter(labels) == pytest.approx(4.514, abs=1e-3)


@pytest.mark.parametrize("diameter", [8, 12, 20, 32, 50, 80])
def test_estimate_is_within_15_percent_across_sizes(runner: ModelRunner, diameter: int) -> None:
    found = estimate_diameter(discs(diameter, seed=diameter), runner, CFG)
    assert found.source == ESTIMATED and found.objects >= CFG.estimate_min_objects
    assert found.diameter == pytest.approx(diameter, rel=0.15)
    assert 1 <= found.looks <= len(CFG.estimate_scales) and found.seconds > 0


def looks(answers: dict[float, float | None], asked: list[float]):
    """`pick_estimate`'s `at` for given per-scale answers (px of the image), recording the scales asked for."""

    def at(scale: float) -> tuple[float | None, int]:
        asked.append(scale)
        return answers[scale], 0 if answers[scale] is None else 5

    return at


SCALES = (0.125, 0.25, 0.5, 1.0, 2.0)
RULE = InferenceConfig(estimate_scales=SCALES, estimate_min_view=10.0, estimate_agreement=1.4, target_diameter=30.0)


def test_looks_go_coarse_to_fine_and_need_a_confirming_neighbour() -> None:
    # A 140 px cell split into pieces at the fine looks (their size in the image halves as the scale doubles):
    # the two coarsest looks agree on the whole cell, and no finer look is taken.
    asked: list[float] = []
    split = pick_estimate(SCALES, looks({0.125: 120.0, 0.25: 128.0, 0.5: 70.0, 1.0: 35.0, 2.0: 18.0}, asked), RULE)
    assert split == (128.0, 0.25) and asked == [0.125, 0.25]
    # Small nuclei merged into blobs by the coarse looks (seen under 10 px, or not confirmed): the fine pair wins.
    asked = []
    merged = pick_estimate(SCALES, looks({0.125: 60.0, 0.25: 40.0, 0.5: 26.0, 1.0: 15.0, 2.0: 15.5}, asked), RULE)
    assert merged == (15.5, 2.0) and sorted(set(asked)) == list(SCALES)
    # The finest look needs no confirmation when it alone sees the objects large enough ...
    finest = looks({0.125: None, 0.25: None, 0.5: None, 1.0: 6.0, 2.0: 5.5}, [])
    assert pick_estimate(SCALES, finest, RULE) == (5.5, 2.0)
    # ... but it does when a coarser look saw them large enough: cells split at every look but the coarsest
    # (pieces of about 26 px in the model's view) contradict each other, and their median decides.
    pieces = looks({0.125: None, 0.25: 72.0, 0.5: 40.0, 1.0: 26.0, 2.0: 13.0}, [])
    assert pick_estimate(SCALES, pieces, RULE) == (pytest.approx(33.0), 0.5)
    # Without any look seen large enough, the one whose objects came closest to the target in its view decides;
    # without objects, nothing does.
    small = looks({0.125: None, 0.25: None, 0.5: 12.0, 1.0: 8.0, 2.0: None}, [])
    assert pick_estimate(SCALES, small, RULE) == (8.0, 1.0)
    assert pick_estimate(SCALES, looks(dict.fromkeys(SCALES), []), RULE) == (None, None)


def test_large_objects_and_empty_images(runner: ModelRunner) -> None:
    # Large objects are measured by a coarse look (fine looks, which could split them, are not needed) ...
    large = estimate_diameter(discs(80, seed=1), runner, CFG)
    assert large.looks <= 3 and large.diameter == pytest.approx(80, rel=0.15)
    # ... and a crop where nothing is found takes every look before MT2's fixed scales.
    empty = estimate_diameter(np.zeros((256, 256, 3), np.uint8), runner, CFG)
    assert (empty.source, empty.looks) == (FIXED, len(CFG.estimate_scales))
    with pytest.raises(ValueError, match="estimate_scales"):
        InferenceConfig(estimate_scales=(0.5, 0.0))
    with pytest.raises(ValueError, match="estimate_agreement"):
        InferenceConfig(estimate_agreement=0.9)


def test_scales_bring_objects_to_the_target_size() -> None:
    cfg = InferenceConfig(target_diameter=30.0)
    assert adaptive_scales(15.0, cfg) == (1.6, 2.0, 2.4)
    assert adaptive_scales(60.0, cfg) == (0.4, 0.5, 0.6)
    assert adaptive_scales(1.0, cfg) == (3.2, 4.0)  # clipped to the range, each scale once
    assert adaptive_scales(30.0, cfg.with_overrides(adaptive_spread=(1.0,))) == (1.0,)
    assert adaptive_scales(15.0, cfg, fluorescence=True) == (1.6, 2.0, 2.4)  # unset: the same target


def test_modality_scales_follow_mt2() -> None:
    assert modality_scales(False, InferenceConfig()) == (0.8, 1.0, 1.2)
    assert modality_scales(True, InferenceConfig()) == (1.5,)


def test_fluorescence_has_its_own_target_when_set() -> None:
    cfg = InferenceConfig(target_diameter=30.0, fluorescence_target_diameter=45.0)
    assert (target_diameter(True, cfg), target_diameter(False, cfg)) == (45.0, 30.0)
    assert adaptive_scales(15.0, cfg, fluorescence=True) == (2.4, 3.0, 3.6)
    assert adaptive_scales(15.0, cfg) == (1.6, 2.0, 2.4)
    given = SizeEstimate(15.0, GIVEN)
    assert choose_scales(given, True, cfg) == (2.4, 3.0, 3.6) and choose_scales(given, False, cfg) == (1.6, 2.0, 2.4)
    fixed = SizeEstimate(None, FIXED)
    assert choose_scales(fixed, True, cfg) == (1.5,)  # fixed scales ignore the targets
    with pytest.raises(ValueError, match="fluorescence_target_diameter"):
        InferenceConfig(fluorescence_target_diameter=-1.0)
    assert describe_scale_rule(cfg) == "adaptive scales, target diameter 30 px (fluorescence 45 px)"
    assert describe_scale_rule(cfg.with_overrides(diameter=12.0)).endswith("(fluorescence 45 px), diameter given 12 px")
    assert describe_scale_rule(cfg.with_overrides(scale_mode="fixed")) == "fixed scales"


def test_diameter_option_overrides_the_estimate_and_fixed_mode_keeps_mt2(runner: ModelRunner) -> None:
    image = discs(20)
    given = size_estimate(image, runner, CFG.with_overrides(diameter=10.0))
    assert (given.source, given.diameter, given.looks) == (GIVEN, 10.0, 0)
    assert choose_scales(given, False, CFG.with_overrides(target_diameter=30.0)) == (2.4, 3.0, 3.6)
    fixed = size_estimate(image, runner, CFG.with_overrides(scale_mode="fixed"))
    assert fixed.source == FIXED and choose_scales(fixed, True, CFG) == (1.5,)
    assert choose_scales(fixed, False, CFG) == (0.8, 1.0, 1.2)
    assert size_estimate(image, runner, CFG, allowed=False).source == FIXED
    empty = size_estimate(np.zeros((128, 128, 3), np.uint8), runner, CFG)
    assert empty.source == FIXED and empty.diameter is None  # nothing found: MT2's scales
    with pytest.raises(ValueError, match="scale_mode"):
        InferenceConfig(scale_mode="auto")


COSTS = Costs(window_seconds=0.1, view_seconds_per_mp=0.1, scale_seconds_per_mp=0.05, post_seconds_per_mp=0.2,
              io_seconds_per_mp=0.1)


def test_plan_counts_the_estimate_inside_the_budget(runner: ModelRunner) -> None:
    cfg = InferenceConfig(budget="100")
    planner = Planner(runner, cfg)
    planner._costs = COSTS
    scales = (1.6, 2.0, 2.4)
    roomy = planner.plan(1000, 1000, False, scales, spent=0.0)
    tight = planner.plan(1000, 1000, False, scales, spent=85.0)
    assert roomy == choose_plan(1000, 1000, False, cfg, COSTS, 100.0, scales=scales)
    assert tight == choose_plan(1000, 1000, False, cfg, COSTS, 15.0, scales=scales)
    assert roomy.scales == scales and "adaptive plan" in roomy.reason
    assert len(tight.scales) < len(roomy.scales) or tight.stride > roomy.stride
    assert tight.scales == (2.0,) or tight.scales[0] < 2.0  # the single-scale fallback is the middle one
    assert planner.estimate_allowed(1000, 1000)
    starved = Planner(runner, InferenceConfig(budget="0.5"))
    starved._costs = COSTS
    assert not starved.estimate_allowed(1000, 1000)
    unlimited = Planner(runner, InferenceConfig(budget="none"))
    assert unlimited.estimate_allowed(1000, 1000) and unlimited._costs is None
    assert unlimited.plan(500, 500, True, scales).scales == scales


def test_predict_reports_the_diameter_and_scales(runner: ModelRunner, tmp_path: Path) -> None:
    import imageio.v3 as iio

    from app.pipeline import run_folder

    (tmp_path / "in").mkdir()
    iio.imwrite(tmp_path / "in" / "cells.png", discs(16, seed=3)[..., 0])
    model = contract_model(tmp_path / "m.onnx")
    cfg = CFG.with_overrides(budget="none", target_diameter=24.0, device="cpu", threads=1)
    code = run_folder(tmp_path / "in", tmp_path / "out", model, cfg, report=tmp_path / "report.csv")
    assert code == 0
    import csv

    with open(tmp_path / "report.csv") as handle:
        row = next(csv.DictReader(handle))
    assert row["size_source"] == ESTIMATED and float(row["diameter"]) == pytest.approx(16, rel=0.15)
    scales = [float(s) for s in row["scales"].split("/")]
    assert scales[1] == pytest.approx(24.0 / float(row["diameter"]), rel=0.01)
    assert float(row["estimate_s"]) > 0
