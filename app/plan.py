"""Which scales, stride and flipped views to run an image at: the full plan when time allows, cheaper plans
when it does not.

The challenge gives every image a time tolerance (10 s, or 10 s per megapixel above 1 MP) and penalises only
the time beyond it. `choose_plan` walks a ladder of plans in accuracy order -- MT2's multi-scale plan at stride
256 with the configured flipped views, then with fewer views, then one scale, then larger strides, then lower
scales -- and takes the first whose estimated cost fits a safety margin of the budget. The cost model is a pure
function of the image size and a few measured throughputs (`Costs`); `Planner` measures the model's throughput
on this device once, lazily, and turns the `--budget` setting into seconds.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace

import numpy as np

from app.config import FLIP_AXES, InferenceConfig
from app.diameter import look_side, modality_scales
from app.infer import Plan, Runner, one_pass_limit
from app.runner import CPU
from app.tiling import crop_shapes, model_load, scaled_size
from app.tolerance import tolerance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Costs:
    """Throughputs the cost model needs: model seconds per window and host seconds per megapixel.

    `view_seconds_per_mp` is the work of one flipped view per megapixel the model sees at its scale (the scaled
    image as the model gets it, `app.tiling.model_load`): cutting the windows, accumulating and averaging their
    outputs, and resizing the image to that scale; `scale_seconds_per_mp` is the work of one scale per megapixel of the
    original image: resizing its maps back and fusing them with the other scales'. `post_seconds_per_mp` is the
    watershed; `io_seconds_per_mp` is reading, normalising and writing; `split_seconds_per_mp` is what the seed
    split adds to the watershed on real maps (the planner sets it to 0 when the split is off).
    """

    window_seconds: float
    view_seconds_per_mp: float
    scale_seconds_per_mp: float
    post_seconds_per_mp: float
    io_seconds_per_mp: float
    split_seconds_per_mp: float = 0.0


# Host-side throughputs measured on the 2-core reference machine (docs/SPEED.md, "Cost model"); the model's
# throughput is always measured on the device at run time instead. The seed split is charged what it costs on
# real maps, not its worst case (every seed holding two cells, `paired_split_seconds_per_mp` of
# `python -m benchmarks.speed`: 0.61-0.71 s per MP): the worst case's excess is a small part of the 25% safety
# margin the planner keeps (`budget_safety`, 2.5 s per MP of tolerance).
SPLIT_SECONDS_PER_MP = 0.25
HOST_COSTS = Costs(window_seconds=0.0, view_seconds_per_mp=0.06, scale_seconds_per_mp=0.03,
                   post_seconds_per_mp=0.10, io_seconds_per_mp=0.20, split_seconds_per_mp=SPLIT_SECONDS_PER_MP)


@dataclass(frozen=True)
class PlanLadder:
    """The cheaper plans tried after MT2's own, in the order they are tried.

    Strides are fractions of the window (0.75 and 1.0 give 384 and 512 for 512 windows, rounded down to a
    multiple of 32); fallback scales below the single scale are the last resort.
    """

    stride_fractions: tuple[float, ...] = (0.75, 1.0)
    fallback_scales: tuple[float, ...] = (1.0, 0.75, 0.5)
    stride_multiple: int = 32


LADDER = PlanLadder()


def full_plan(fluorescence: bool, cfg: InferenceConfig, reason: str, scales: tuple[float, ...] | None = None) -> Plan:
    """The full scales (`scales`, else MT2's for the modality) at the configured stride and flipped views."""
    return Plan(scales or modality_scales(fluorescence, cfg), cfg.stride, reason, cfg.flips)


def estimate_seconds(
    h: int,
    w: int,
    scales: tuple[float, ...],
    stride: int,
    costs: Costs,
    *,
    window: int = InferenceConfig.window,
    shapes: list[tuple[int, int]] | None = None,
    flips: int = 1,
    one_pass_max: int = 0,
) -> float:
    """Estimated seconds for one image: windows x model time, plus host work per megapixel.

    `shapes` are the arrays the model sees (default: the whole image); on the whole-slide path they are the
    haloed tiles, so halo overlap is paid for in model windows and in map work. Every flipped view runs the
    model on its scale again and is accumulated at the scaled size; each scale is resized back once. Scaled
    arrays with no side above `one_pass_max` run as one padded input (`app.tiling.model_load`).
    """
    shapes = shapes if shapes is not None else [(h, w)]
    loads = [
        model_load(scaled_size(a, s), scaled_size(b, s), window, stride, one_pass_max)
        for a, b in shapes
        for s in scales
    ]
    windows = sum(load for load, _ in loads) * flips
    view_mp = sum(pixels for _, pixels in loads) / 1e6
    crop_mp = sum(a * b for a, b in shapes) / 1e6
    post = costs.post_seconds_per_mp + costs.split_seconds_per_mp
    host = view_mp * flips * costs.view_seconds_per_mp + crop_mp * (len(scales) * costs.scale_seconds_per_mp + post)
    return windows * costs.window_seconds + host + h * w / 1e6 * costs.io_seconds_per_mp


def estimate_look_seconds(h: int, w: int, cfg: InferenceConfig, costs: Costs) -> float:
    """Estimated seconds of the diameter estimate at its worst (every look of `cfg.estimate_scales` taken): each
    look runs the windows of its central crop at its scale and the watershed on that crop, with nothing read or
    written. The crops are what `app.diameter.look` runs on, so a small image costs only its own pixels.

    The seed split is not charged: the looks' time is charged to the image's budget before the main plan is
    chosen, so an optimistic figure can cost that plan some views but never the budget. Measured on the six 1 MP
    phase-contrast validation images (2 threads, 0.179 s per window): 0.61-0.97 s for the looks taken, 1.10 s
    estimated for all five (docs/SPEED.md)."""
    no_io = replace(costs, io_seconds_per_mp=0.0, split_seconds_per_mp=0.0)
    total = 0.0
    for scale in cfg.estimate_scales:
        side = look_side(scale, cfg)
        total += estimate_seconds(min(h, side), min(w, side), (scale,), cfg.stride, no_io, window=cfg.window,
                                  one_pass_max=cfg.one_pass_max_side)
    return total


def candidate_plans(
    fluorescence: bool, cfg: InferenceConfig, ladder: PlanLadder = LADDER, scales: tuple[float, ...] | None = None
) -> list[tuple[tuple[float, ...], int, int, str]]:
    """(scales, stride, flips, label) in accuracy order; the last one is the cheapest and always used as last
    resort. Flipped views are dropped first: they cost a full pass each for a smaller gain than a scale.

    `scales` (adaptive ones) replace MT2's per-modality scales; their middle one is the single-scale fallback."""
    if scales:
        full = tuple(scales)
        single = full[len(full) // 2]
    else:
        full = modality_scales(fluorescence, cfg)
        single = min(full, key=lambda s: abs(s - 1.0)) if not fluorescence else max(full)
    strides = sorted(
        {
            max(ladder.stride_multiple, int(cfg.window * f) // ladder.stride_multiple * ladder.stride_multiple)
            for f in ladder.stride_fractions
        }
        - {cfg.stride}
    )
    strides = [s for s in strides if cfg.stride < s <= cfg.window]
    widest = strides[-1] if strides else cfg.stride
    views = sorted((f for f in FLIP_AXES if 1 < f <= cfg.flips), reverse=True)
    name = "adaptive plan" if scales else "MT2 plan"
    out: list[tuple[tuple[float, ...], int, int, str]] = [
        *((full, cfg.stride, f, f"{name}, flipped views") for f in views),
        (full, cfg.stride, 1, name),
    ]
    if len(full) > 1:
        out.append(((single,), cfg.stride, 1, "one scale"))
    out += [((single,), s, 1, "one scale, larger stride") for s in strides]
    out += [((s,), widest, 1, "lower scale") for s in ladder.fallback_scales if s < single]
    return out


def describe(scales: tuple[float, ...], stride: int, flips: int = 1) -> str:
    views = f" x{flips} views" if flips > 1 else ""
    return f"scales {'/'.join(f'{s:g}' for s in scales)} stride {stride}{views}"


def choose_plan(
    h: int,
    w: int,
    fluorescence: bool,
    cfg: InferenceConfig,
    costs: Costs,
    budget_seconds: float,
    ladder: PlanLadder = LADDER,
    scales: tuple[float, ...] | None = None,
    *,
    shapes: list[tuple[int, int]] | None = None,
    pixels: int | None = None,
) -> Plan:
    """The most accurate plan whose estimate fits `budget_seconds * cfg.budget_safety`.

    When none fits, the plan with the lowest estimate, and of equally cheap plans the most accurate: on a small
    image a lower scale needs no fewer windows (one padded window either way), so it would lose accuracy for
    nothing. `shapes` (the arrays the model sees) and `pixels` (those read, normalised and written) default to
    the image's (`crop_shapes`, h x w); a streamed slide gives its tissue tiles (`app.slides`).
    """
    limit = budget_seconds * cfg.budget_safety
    shapes = crop_shapes(h, w, cfg) if shapes is None else shapes
    io_h, io_w = (h, w) if pixels is None else (1, pixels)
    candidates = candidate_plans(fluorescence, cfg, ladder, scales)
    estimates = [
        estimate_seconds(io_h, io_w, sc, st, costs, window=cfg.window, shapes=shapes, flips=f,
                         one_pass_max=cfg.one_pass_max_side)
        for sc, st, f, _ in candidates
    ]
    margin = f"{cfg.budget_safety:.0%} of the {budget_seconds:.1f} s budget"
    for (scales, stride, flips, label), est in zip(candidates, estimates):
        if est <= limit:
            what = describe(scales, stride, flips)
            return Plan(scales, stride, f"{label}: {what}, estimated {est:.1f} s within {margin}", flips)
    cheapest = min(range(len(candidates)), key=lambda i: (estimates[i], i))
    scales, stride, flips, _ = candidates[cheapest]
    return Plan(
        scales,
        stride,
        f"over budget, cheapest plan: {describe(scales, stride, flips)}, estimated {estimates[cheapest]:.1f} s "
        f"against {margin}",
        flips,
    )


def parse_budget(value: str) -> float | str:
    """`cfg.budget` as "none", "auto" or a positive number of seconds; anything else is refused."""
    text = str(value).strip().lower()
    if text in ("none", "auto"):
        return text
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"budget must be 'auto', 'none' or a number of seconds, got {value!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"budget must be a positive number of seconds, got {value!r}")
    return seconds


@dataclass(frozen=True)
class Probe:
    """How the planner times the model before the first image.

    On the CPU a convolutional network's time grows with the pixel count even for small inputs (0.9-1.2 s per
    512 x 512 window-equivalent at 128, 256 and 512 pixel sides with the shipped architecture on the 2-core
    reference machine, docs/SPEED.md), so a few calls on one small window give the per-window time in under
    half a second; the median is kept because one scheduling hiccup, scaled up 16 times, would otherwise
    wreck the estimate. On a GPU
    small inputs underuse the device, so it is timed on a real batch after one warm-up, which the real run
    would pay anyway.
    """

    cpu_side: int = 128
    cpu_calls: int = 6  # the first is a warm-up; the median of the others is kept (robust to a busy core)
    gpu_calls: int = 3


PROBE = Probe()


def measure_window_seconds(runner: Runner, cfg: InferenceConfig, probe: Probe = PROBE) -> tuple[float, float]:
    """(model seconds per cfg.window window, seconds the measurement took)."""
    start = time.perf_counter()
    on_cpu = runner.provider == CPU
    fixed = runner.input_hw
    side = min(probe.cpu_side, cfg.window) if on_cpu and fixed is None else cfg.window
    count = 1 if on_cpu else cfg.batch_size
    calls = probe.cpu_calls if on_cpu else probe.gpu_calls
    batch = np.random.default_rng(0).random((count, 3, side, side), dtype=np.float32)
    times = []
    for _ in range(max(2, calls)):
        t0 = time.perf_counter()
        runner.run(batch)
        times.append(time.perf_counter() - t0)
    per_window = float(np.median(times[1:])) / count * (cfg.window / side) ** 2
    return per_window, time.perf_counter() - start


class Planner:
    """Turns `cfg.budget` into a plan per image; measures the device's model throughput once, when first needed.

    With "auto" the budget is the image's tolerance minus the start-up measured before the first image and
    minus the time the throughput measurement itself took (both conservative for multi-image runs).
    """

    def __init__(
        self,
        runner: Runner,
        cfg: InferenceConfig,
        startup_seconds: float = 0.0,
        *,
        host_costs: Costs = HOST_COSTS,
        ladder: PlanLadder = LADDER,
    ) -> None:
        self.runner = runner
        # Plans are costed the way the runner will run them (`one_pass_limit`: windows for a fixed input size).
        self.cfg = replace(cfg, one_pass_max_side=one_pass_limit(runner, cfg))
        self.startup_seconds = float(startup_seconds)
        self.budget = parse_budget(cfg.budget)
        self.host_costs = host_costs
        self.ladder = ladder
        self.measure_seconds = 0.0
        self._costs: Costs | None = None

    @property
    def costs(self) -> Costs:
        """Host costs with the model's per-window time measured on this runner (once)."""
        if self._costs is None:
            per_window, spent = measure_window_seconds(self.runner, self.cfg)
            self.measure_seconds = spent
            split = self.host_costs.split_seconds_per_mp if self.cfg.seed_split_height > 0 else 0.0
            self._costs = replace(self.host_costs, window_seconds=per_window, split_seconds_per_mp=split)
            log.debug("model throughput: %.3f s per %d-pixel window (measured in %.2f s)", per_window,
                     self.cfg.window, spent)
        return self._costs

    def budget_seconds(self, height: int, width: int) -> float | None:
        """Seconds available for this image, or None when the budget is "none"."""
        if self.budget == "none":
            return None
        if self.budget == "auto":
            self.costs  # measure first, so the measurement's own time is charged to the budget
            return tolerance(height, width) - self.startup_seconds - self.measure_seconds
        return float(self.budget)

    def estimate_allowed(self, height: int, width: int) -> bool:
        """Whether the diameter estimate's looks (`estimate_look_seconds`, all of them at worst) fit
        `cfg.estimate_budget_share` of the image's budget; always with no budget."""
        budget = self.budget_seconds(height, width)
        if budget is None:
            return True
        cost = estimate_look_seconds(height, width, self.cfg, self.costs)
        return cost <= self.cfg.estimate_budget_share * budget

    def plan(
        self, height: int, width: int, fluorescence: bool, scales: tuple[float, ...] | None = None,
        spent: float = 0.0, *, shapes: list[tuple[int, int]] | None = None, pixels: int | None = None,
        cfg: InferenceConfig | None = None,
    ) -> Plan:
        """The plan for one image, logged with its reason. `scales` replace MT2's (adaptive mode); `spent` is
        what this image already used of its budget (the diameter estimate); `shapes` and `pixels` as for
        `choose_plan` (a streamed slide's tissue tiles); `cfg`, this kind of image's settings (views, scales:
        `app.modes`) in place of the planner's, run as the planner's are."""
        cfg = self.cfg if cfg is None else replace(cfg, one_pass_max_side=self.cfg.one_pass_max_side)
        budget = self.budget_seconds(height, width)
        if budget is None:
            what = describe(scales or modality_scales(fluorescence, cfg), cfg.stride, cfg.flips)
            name = "adaptive plan" if scales else "MT2 plan"
            chosen = full_plan(fluorescence, cfg, f"budget none: {name}, {what}", scales)
        else:
            chosen = choose_plan(height, width, fluorescence, cfg, self.costs, budget - spent, self.ladder,
                                 scales, shapes=shapes, pixels=pixels)
        log.debug("plan for %d x %d: %s", height, width, chosen.reason)
        return chosen
