"""Planner: the cost model, the plan ladder under shrinking budgets, and the three budget settings."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.config import InferenceConfig
from app.infer import Plan
from app.plan import (
    Costs,
    Planner,
    candidate_plans,
    choose_plan,
    estimate_look_seconds,
    estimate_seconds,
    full_plan,
    parse_budget,
)
from app.runner import ModelRunner
from app.tiling import crop_shapes
from tests.onnx_models import shaped_model

CFG = InferenceConfig(one_pass_max_side=0)  # windows everywhere; one-pass inputs are costed in their own tests
# Fake timings: 0.1 s per model window; host work 0.1 s per MP the model sees per view, 0.05 per MP per scale,
# 0.2 s per MP of watershed and 0.1 of reading and writing.
COSTS = Costs(window_seconds=0.1, view_seconds_per_mp=0.1, scale_seconds_per_mp=0.05, post_seconds_per_mp=0.2,
              io_seconds_per_mp=0.1)
MP = 1.048576  # 1024 x 1024


def test_estimate_counts_windows_and_host_work() -> None:
    # 1024 x 1024 at scale 1, stride 256: 3 x 3 windows of 512; 1.048576 MP of host work.
    est = estimate_seconds(1024, 1024, (1.0,), 256, COSTS)
    assert est == pytest.approx(9 * 0.1 + MP * 0.1 + MP * (0.05 + 0.2) + MP * 0.1)
    assert estimate_seconds(1024, 1024, (1.0,), 512, COSTS) < est
    assert estimate_seconds(1024, 1024, (0.8, 1.0, 1.2), 256, COSTS) > est


def test_look_cost_counts_each_looks_crop() -> None:
    cfg = CFG.with_overrides(estimate_scales=(0.5, 1.0, 2.0), estimate_side=512, window=512)
    window_mp = 512**2 / 1e6
    # A 256 x 256 image: every look's crop is the whole image, one window each, no reading or writing.
    small = 3 * 0.1 + 3 * window_mp * 0.1 + 3 * 0.065536 * (0.05 + 0.2)
    assert estimate_look_seconds(256, 256, cfg, COSTS) == pytest.approx(small)
    # One pass instead: the looks see the image at 128, 256 and 512 px, and pay for those pixels only.
    seen = (128**2 + 256**2 + 512**2) / 1e6
    one_pass = seen / window_mp * 0.1 + seen * 0.1 + 3 * 0.065536 * (0.05 + 0.2)
    assert estimate_look_seconds(256, 256, cfg.with_overrides(one_pass_max_side=1024), COSTS) == pytest.approx(one_pass)
    # A 4000 x 4000 image: crops of 1024, 512 and 256 px, each one window as the model sees it.
    large = 3 * 0.1 + 3 * window_mp * 0.1 + (1024**2 + 512**2 + 256**2) / 1e6 * (0.05 + 0.2)
    assert estimate_look_seconds(4000, 4000, cfg, COSTS) == pytest.approx(large)
    assert estimate_look_seconds(8000, 8000, cfg, COSTS) == pytest.approx(large)  # crops do not grow further


def test_ladder_is_in_accuracy_order() -> None:
    plans = candidate_plans(False, CFG)
    assert plans[0][:2] == ((0.8, 1.0, 1.2), 256)
    assert plans[1][:2] == ((1.0,), 256)
    assert [p[1] for p in plans[1:4]] == [256, 384, 512]
    assert plans[-1][0] == (0.5,)
    fluo = candidate_plans(True, CFG)
    assert fluo[0][:2] == ((1.5,), 256)
    assert fluo[1][:2] == ((1.5,), 384)


def test_flipped_views_cost_a_pass_each_and_go_first() -> None:
    one = estimate_seconds(1024, 1024, (1.0,), 256, COSTS)
    four = estimate_seconds(1024, 1024, (1.0,), 256, COSTS, flips=4)
    assert four == pytest.approx(4 * 9 * 0.1 + 4 * MP * 0.1 + MP * (0.05 + 0.2) + MP * 0.1)
    assert four > one
    plans = candidate_plans(False, CFG.with_overrides(flips=4))
    assert [p[2] for p in plans[:4]] == [4, 2, 1, 1]
    assert all(p[0] == (0.8, 1.0, 1.2) for p in plans[:3]) and plans[3][0] == (1.0,)
    assert [p[2] for p in candidate_plans(True, CFG.with_overrides(flips=2))[:2]] == [2, 1]
    assert all(p[2] == 1 for p in candidate_plans(False, CFG))


def test_budget_drops_flipped_views_before_scales() -> None:
    cfg = CFG.with_overrides(flips=4)
    ample = choose_plan(1000, 1000, False, cfg, COSTS, budget_seconds=1000.0)
    assert (ample.scales, ample.flips) == ((0.8, 1.0, 1.2), 4) and "x4 views" in ample.reason
    full = estimate_seconds(1000, 1000, (0.8, 1.0, 1.2), 256, COSTS)
    two = estimate_seconds(1000, 1000, (0.8, 1.0, 1.2), 256, COSTS, flips=2)
    middle = choose_plan(1000, 1000, False, cfg, COSTS, budget_seconds=(full + two) / 2 / cfg.budget_safety)
    assert (middle.scales, middle.flips) == ((0.8, 1.0, 1.2), 1)
    assert full_plan(False, cfg, "x").flips == 4


def test_full_plan_when_budget_is_ample() -> None:
    plan = choose_plan(1000, 1000, False, CFG, COSTS, budget_seconds=1000.0)
    assert (plan.scales, plan.stride) == ((0.8, 1.0, 1.2), 256)
    assert "MT2 plan" in plan.reason


def test_plans_get_cheaper_as_the_budget_shrinks() -> None:
    h = w = 3000
    seen = []
    for budget in (1000.0, 60.0, 30.0, 20.0, 12.0, 6.0):
        plan = choose_plan(h, w, False, CFG, COSTS, budget)
        seen.append((plan.scales, plan.stride))
        if "over budget" not in plan.reason:
            est = estimate_seconds(h, w, plan.scales, plan.stride, COSTS)
            assert est <= budget * CFG.budget_safety
    assert seen[0] == ((0.8, 1.0, 1.2), 256)
    assert ((1.0,), 256) in seen and ((1.0,), 512) in seen
    costs = [estimate_seconds(h, w, s, st, COSTS) for s, st in seen]
    assert costs == sorted(costs, reverse=True)


def test_over_budget_returns_the_last_resort_and_says_so() -> None:
    plan = choose_plan(3000, 3000, False, CFG, COSTS, budget_seconds=0.5)
    assert plan == Plan((0.5,), 512, plan.reason)
    assert plan.reason.startswith("over budget")
    negative = choose_plan(3000, 3000, True, CFG, COSTS, budget_seconds=-3.0)
    assert negative.scales == (0.5,) and "over budget" in negative.reason


def test_over_budget_small_image_keeps_the_scale_when_lower_scales_save_nothing() -> None:
    # Through windows, 500 x 500 needs one (padded) window at 1.0 and at 0.5 alike, so scale 1.0 is the cheapest
    # plan too; in one pass the lower scale costs its own pixels, a quarter, and is the cheapest.
    plan = choose_plan(500, 500, False, CFG, COSTS, budget_seconds=0.1)
    assert (plan.scales, plan.stride) == ((1.0,), 256) and plan.reason.startswith("over budget")
    one_pass = choose_plan(500, 500, False, CFG.with_overrides(one_pass_max_side=1024), COSTS, budget_seconds=0.1)
    assert one_pass.scales == (0.5,) and one_pass.reason.startswith("over budget")


def test_one_pass_costs_its_padded_pixels() -> None:
    # 1000 x 1000 at scale 1: one 1024 x 1024 input (4 windows' pixels) instead of a 3 x 3 grid of windows.
    windows = estimate_seconds(1000, 1000, (1.0,), 256, COSTS)
    whole = estimate_seconds(1000, 1000, (1.0,), 256, COSTS, one_pass_max=1024)
    assert windows - whole == pytest.approx((9 - 4) * 0.1 + (1.0 - MP) * 0.1)
    # Above the limit the image takes windows again.
    assert estimate_seconds(1000, 1000, (1.0,), 256, COSTS, one_pass_max=999) == pytest.approx(windows)
    # The plans follow the cost: the full plan fits a budget in one pass that windows would not meet.
    cfg = CFG.with_overrides(one_pass_max_side=1024, flips=4)
    full = estimate_seconds(1000, 1000, (0.8, 1.0, 1.2), 256, COSTS, flips=4, one_pass_max=1024)
    assert full < estimate_seconds(1000, 1000, (0.8, 1.0, 1.2), 256, COSTS, flips=4)
    plan = choose_plan(1000, 1000, False, cfg, COSTS, budget_seconds=full / cfg.budget_safety)
    assert (plan.scales, plan.flips) == ((0.8, 1.0, 1.2), 4)
    assert choose_plan(1000, 1000, False, replace(cfg, one_pass_max_side=0), COSTS, full / cfg.budget_safety).flips < 4


def test_whole_slide_estimate_pays_for_halos() -> None:
    cfg = CFG.with_overrides(tile_threshold_pixels=1_000_000, tile_size=1000, tile_halo=100)
    shapes = crop_shapes(3000, 3000, cfg)
    assert len(shapes) == 9 and (1200, 1200) in shapes and (1100, 1100) in shapes
    tiled = estimate_seconds(3000, 3000, (1.0,), 256, COSTS, shapes=shapes)
    assert tiled > estimate_seconds(3000, 3000, (1.0,), 256, COSTS)


def test_budget_parsing() -> None:
    assert parse_budget("auto") == "auto" and parse_budget("None") == "none" and parse_budget("45") == 45.0
    for bad in ("soon", "-1", "0", "nan"):
        with pytest.raises(ValueError, match="budget"):
            parse_budget(bad)


def test_planner_budget_none_is_always_the_full_plan_without_measuring(runner: ModelRunner) -> None:
    planner = Planner(runner, CFG.with_overrides(budget="none"), startup_seconds=500.0)
    assert planner.plan(10_000, 10_000, False).scales == (0.8, 1.0, 1.2)
    fluo = planner.plan(800, 800, True)
    assert (fluo.scales, fluo.stride) == ((1.5,), 256) and "budget none" in fluo.reason
    assert planner._costs is None  # nothing was measured


def test_planner_number_budget_uses_that_many_seconds(runner: ModelRunner) -> None:
    planner = Planner(runner, CFG.with_overrides(budget="20"), startup_seconds=5.0)
    planner._costs = COSTS  # fake timings instead of this machine's
    assert planner.budget_seconds(3000, 3000) == 20.0
    assert planner.plan(3000, 3000, False) == choose_plan(3000, 3000, False, CFG, COSTS, 20.0)


def test_planner_auto_budget_is_tolerance_minus_startup_and_measurement(runner: ModelRunner) -> None:
    cfg = CFG.with_overrides(budget="auto", batch_size=2, window=64)
    planner = Planner(runner, cfg, startup_seconds=3.0)
    budget = planner.budget_seconds(2000, 2000)
    measured = planner.costs
    assert 0.0 < measured.window_seconds < planner.measure_seconds < 5.0
    assert budget == pytest.approx(40.0 - 3.0 - planner.measure_seconds)
    planner.plan(2000, 2000, False)
    assert planner.costs is measured  # measured once per run
    # A start-up that eats the whole tolerance leaves a negative budget: the cheapest plan, flagged.
    late = Planner(runner, cfg, startup_seconds=60.0)
    late._costs, late.measure_seconds = COSTS, 0.0
    assert late.plan(2000, 2000, False).reason.startswith("over budget")


def test_planner_costs_a_fixed_input_model_with_windows(tmp_path, runner: ModelRunner) -> None:
    fixed = ModelRunner(shaped_model(tmp_path / "fixed.onnx", input_dims=(1, None, 512, 512)), "cpu")
    cfg = CFG.with_overrides(one_pass_max_side=1024)
    assert Planner(fixed, cfg).cfg.one_pass_max_side == 0  # such a model always takes windows (app.infer)
    assert Planner(runner, cfg).cfg.one_pass_max_side == 1024


def test_planner_counts_the_seed_split_in_post_processing(runner: ModelRunner) -> None:
    host = replace(COSTS, window_seconds=0.0, split_seconds_per_mp=0.5)
    cfg = CFG.with_overrides(budget="auto", batch_size=2, window=64)
    off = Planner(runner, cfg, host_costs=host).costs
    on = Planner(runner, cfg.with_overrides(seed_split_height=0.15), host_costs=host).costs
    assert (off.post_seconds_per_mp, off.split_seconds_per_mp) == (0.2, 0.0)
    assert (on.post_seconds_per_mp, on.split_seconds_per_mp) == (0.2, 0.5)
    without = replace(on, split_seconds_per_mp=0.0)
    extra = estimate_seconds(1000, 1000, (1.0,), 256, on) - estimate_seconds(1000, 1000, (1.0,), 256, without)
    assert extra == pytest.approx(0.5)  # the split's cost, once per megapixel of the image
    # The looks of the diameter estimate are charged the plain watershed (their time is measured and charged
    # before the main plan is chosen).
    assert estimate_look_seconds(1000, 1000, CFG, on) == pytest.approx(estimate_look_seconds(1000, 1000, CFG, without))
