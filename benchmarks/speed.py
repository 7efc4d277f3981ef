"""Speed and memory of the app per image size, and ONNX Runtime against PyTorch eager on the same weights.

    python -m benchmarks.speed                       # 0.25, 1, 9, 25 and 100 MP, mode challenge (budget auto)
    python -m benchmarks.speed --sizes 0.25,1,9 --mode fast --no-compare
    python -m benchmarks.speed --sizes 1,9 --budget none --model weights/
    python -m benchmarks.speed --sizes 0.25 --no-compare

Every size runs in a fresh subprocess (so its peak resident memory is its own and start-up is paid as in the
official one-container-per-image protocol) through the app's own `pipeline.process_image`: read, normalise,
plan, segment (resize, model, fuse, post-process, paste) and write, each stage timed. Images are generated
(light background with darker stained cells, RGB, uncompressed TIFF) before the timed child starts.
Without `--model` the shipped weights in weights/ are used, or, while there are none, a random-weight export of
the shipped architecture (timing does not depend on the weights; post-processing load does a little).
The comparison exports one `training.model.MT2Net` to ONNX and times the same batch through both engines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from app.modes import MODES

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_SIZES = (0.25, 1.0, 9.0, 25.0, 100.0)
SHARE_SIZES = (1.0, 9.0)  # sizes the non-model share target applies to
NON_MODEL = ("read", "normalise", "resize", "fuse", "postprocess", "paste", "write")
STAGES = ("read", "normalise", "estimate", "plan", "resize", "model", "fuse", "postprocess", "paste", "write")
TARGET_SHARE = 0.15
TARGET_RATIO = 1.3
TARGET_PEAK_BYTES = 3e9
OPSET = 17


# --- inputs and models -------------------------------------------------------------------------------------------


def side_for(megapixels: float) -> int:
    """Side of a square image of about `megapixels`."""
    return int(round(math.sqrt(megapixels * 1e6)))


def stained_cells(h: int, w: int, seed: int = 0, pattern: int = 1024) -> np.ndarray:
    """uint8 H×W×3 brightfield-like image: darker purple cells (radius 6..20) on a light, noisy background.

    A `pattern`-sized patch is drawn once and repeated, so even 100 MP images are generated in seconds.
    """
    rng = np.random.default_rng(seed)
    p = min(pattern, max(h, w))
    patch = np.empty((p, p, 3), np.uint8)
    patch[:] = (228, 222, 232)
    yy, xx = np.mgrid[:p, :p]
    for _ in range(p * p // 2500):
        cy, cx, r = rng.integers(0, p), rng.integers(0, p), rng.integers(6, 21)
        y0, y1, x0, x1 = max(0, cy - r), min(p, cy + r + 1), max(0, cx - r), min(p, cx + r + 1)
        disc = (yy[y0:y1, x0:x1] - cy) ** 2 + (xx[y0:y1, x0:x1] - cx) ** 2 <= r * r
        patch[y0:y1, x0:x1][disc] = (120, 70, 150)
    noise = rng.integers(0, 12, size=patch.shape, dtype=np.uint8)
    patch = patch - noise
    reps = (math.ceil(h / p), math.ceil(w / p), 1)
    return np.ascontiguousarray(np.tile(patch, reps)[:h, :w])


def export_random_model(path: Path, seed: int = 0):
    """Export the shipped architecture with random weights (the ONNX contract); return the torch module."""
    import torch

    from training.model import ModelConfig, MT2Net, ProbabilityModel

    torch.manual_seed(seed)
    module = ProbabilityModel(MT2Net(ModelConfig())).eval()
    axes = {name: {0: "N", 2: "H", 3: "W"} for name in ("image", "cls", "cell", "boundary")}
    with torch.no_grad():
        torch.onnx.export(
            module,
            (torch.rand(1, 3, 256, 256),),
            str(path),
            input_names=["image"],
            output_names=["cls", "cell", "boundary"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return module


def default_model(workdir: Path, precision: str = "auto") -> tuple[Path, str]:
    """The shipped weights when present, else a random-weight export of the shipped architecture."""
    from app.errors import ModelError
    from app.runner import resolve_model

    try:
        return resolve_model(ROOT / "weights", "cpu", precision), "shipped weights"
    except ModelError:
        path = workdir / "mt2.random.onnx"
        export_random_model(path)
        return path, "random-weight MT2Net export (no shipped weights yet)"


# --- one size, in its own process ---------------------------------------------------------------------------------


def child(image: Path, model: Path, mode: str, budget: str | None, threads: int, workers: int | None,
          out: Path) -> None:
    """Run one image through the pipeline's per-image path and write the measurements as JSON."""
    from app.config import InferenceConfig
    from app.manifest import postprocess_settings
    from app.modes import mode_config
    from app.pipeline import process_image
    from app.plan import Planner, estimate_seconds
    from app.runner import ModelRunner
    from app.tiling import crop_shapes
    from app.timing import process_age
    from app.tolerance import tolerance

    # The settings tuned for the weights (views, fusion, thresholds), then the mode's, apply as they do in
    # `app predict`; --budget, when given, wins over the mode's.
    tuned = InferenceConfig().with_overrides(**postprocess_settings(model))
    cfg = mode_config(tuned, mode).with_overrides(budget=budget, device="cpu", threads=threads)
    if workers is not None:
        cfg = cfg.with_overrides(tile_workers=workers)
    runner = ModelRunner(model, cfg.device, cfg.threads)
    startup = process_age()
    planner = Planner(runner, cfg, startup)
    timings: dict[str, float] = {}
    row: dict = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        process_image(image, Path(tmp) / "out_label.tiff", runner, planner, cfg, row, timings)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    h, w = row["height"], row["width"]
    result = {
        "height": h,
        "width": w,
        "plan": row["plan"],
        "scales": row["scales"],
        "stride": row["stride"],
        "flips": row["flips"],
        "cells": row["cells"],
        "timings": timings,
        "seconds": seconds,
        "startup": startup,
        "end_to_end": startup + seconds,
        "tolerance": tolerance(h, w),
        "peak_rss": peak,
        "window_seconds": planner.costs.window_seconds if planner._costs is not None else None,
        "estimate": estimate_seconds(h, w, tuple(plan_scales(row)), row["stride"], planner.costs,
                                     window=cfg.window, shapes=crop_shapes(h, w, cfg), flips=row["flips"],
                                     one_pass_max=planner.cfg.one_pass_max_side),
        "provider": runner.provider,
    }
    out.write_text(json.dumps(result))


def plan_scales(row: dict) -> list[float]:
    return [float(s) for s in str(row["scales"]).split("/")]


def run_size(megapixels: float, model: Path, args: argparse.Namespace, workdir: Path) -> dict:
    """Generate the image, then time it in a fresh interpreter."""
    import tifffile

    side = side_for(megapixels)
    image_path = workdir / f"bench_{side}.tif"
    tifffile.imwrite(image_path, stained_cells(side, side), photometric="rgb")
    out = workdir / f"bench_{side}.json"
    cmd = [sys.executable, "-m", "benchmarks.speed", "--child", str(image_path), "--model", str(model),
           "--mode", args.mode, "--threads", str(args.threads), "--json", str(out)]
    if args.budget is not None:
        cmd += ["--budget", args.budget]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    subprocess.run(cmd, check=True, cwd=ROOT)
    image_path.unlink()
    result = json.loads(out.read_text())
    result["megapixels"] = megapixels
    return result


# --- ONNX Runtime vs eager ---------------------------------------------------------------------------------------


def compare_engines(batch_size: int, window: int, repeats: int, threads: int) -> dict:
    """Median seconds of one batch through ORT and PyTorch eager, same weights, same input, alternating."""
    import torch

    from app.runner import ModelRunner

    torch.set_num_threads(threads or os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mt2.onnx"
        module = export_random_model(path)
        runner = ModelRunner(path, "cpu", threads)
        batch = np.random.default_rng(1).random((batch_size, 3, window, window), dtype=np.float32)
        tensor = torch.from_numpy(batch)
        ort_times, eager_times = [], []
        with torch.inference_mode():
            ort_out = runner.run(batch)  # warm-up both
            eager_out = module(tensor)
            diff = max(float(np.abs(a - b.numpy()).max()) for a, b in zip(ort_out, eager_out))
            for _ in range(repeats):
                t0 = time.perf_counter()
                runner.run(batch)
                ort_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                module(tensor)
                eager_times.append(time.perf_counter() - t0)
    ort_s, eager_s = statistics.median(ort_times), statistics.median(eager_times)
    return {"ort": ort_s, "eager": eager_s, "ratio": eager_s / ort_s, "max_abs_diff": diff,
            "batch": batch_size, "window": window, "torch": torch.__version__}


# --- post-processing on a dense cell map (independent of the weights) ------------------------------------------


def dense_post_seconds_per_mp(side: int = 3000, spacing: int = 30, seed: int = 0) -> float:
    """Seconds per megapixel of MT2's watershed on a map crowded with cells (radius 7..13, every 30 px).

    Random weights leave the watershed almost nothing to do; trained weights on crowded images do not, so
    this bounds the post-processing share from the other side.
    """
    from scipy import ndimage

    from app.config import InferenceConfig
    from app.postprocess import instance_map

    rng = np.random.default_rng(seed)
    mask = np.zeros((side, side), bool)
    yy, xx = np.mgrid[-13:14, -13:14]
    for cy in range(spacing, side - 14, spacing):
        for cx in range(spacing, side - 14, spacing):
            r = int(rng.integers(7, 14))
            mask[cy - 13 : cy + 14, cx - 13 : cx + 14] |= yy**2 + xx**2 <= r * r
    distance = ndimage.distance_transform_edt(mask).astype(np.float32)
    cell = np.clip(distance / 2.0, 0.0, 1.0)
    boundary = np.clip(1.0 - np.abs(distance - 1.0), 0.0, 1.0).astype(np.float32)
    t0 = time.perf_counter()
    labels = instance_map(cell, boundary, InferenceConfig())
    seconds = time.perf_counter() - t0
    if labels.max() < (side // spacing - 1) ** 2 // 2:
        raise RuntimeError(f"dense map gave only {labels.max()} cells; the benchmark's map is wrong")
    return seconds / (side * side / 1e6)


def paired_split_seconds_per_mp(side: int = 3000, spacing: int = 40, seed: int = 0) -> tuple[float, float]:
    """(watershed, watershed with the seed split) seconds per megapixel on a map where every seed holds two
    touching cells (domes of radius 7..13 overlapping by a tenth of their diameter, every 40 px): the split's
    worst case, since every seed is then reconstructed."""
    from app.config import InferenceConfig
    from app.postprocess import instance_map

    rng = np.random.default_rng(seed)
    cell = np.zeros((side, side), np.float32)
    yy, xx = np.mgrid[-14:15, -28:29]
    for cy in range(spacing, side - 15, spacing):
        for cx in range(spacing, side - 29, spacing):
            r = int(rng.integers(7, 14))
            offset = 0.9 * r
            domes = [1 - 0.4 * ((yy**2 + (xx - dx) ** 2) / r**2) for dx in (-offset, offset)]
            inside = [(yy**2 + (xx - dx) ** 2) <= r * r for dx in (-offset, offset)]
            pair = np.maximum(*(np.where(m, d, 0) for m, d in zip(inside, domes)))
            patch = cell[cy - 14 : cy + 15, cx - 28 : cx + 29]
            np.maximum(patch, pair.astype(np.float32), out=patch)
    boundary = np.zeros_like(cell)
    off = InferenceConfig(cell_threshold=0.1, seed_threshold=0.5, min_seed_area=8)
    seconds, counts = [], []
    for cfg in (off, off.with_overrides(seed_split_height=0.15)):
        t0 = time.perf_counter()
        counts.append(int(instance_map(cell, boundary, cfg).max()))
        seconds.append(time.perf_counter() - t0)
    if counts[1] < 1.9 * counts[0]:
        raise RuntimeError(f"the split gave {counts[1]} cells from {counts[0]} pairs; the benchmark's map is wrong")
    mp = side * side / 1e6
    return seconds[0] / mp, seconds[1] / mp


# --- report --------------------------------------------------------------------------------------------------------


def non_model_share(r: dict) -> float:
    t = r["timings"]
    return sum(t.get(k, 0.0) for k in NON_MODEL) / r["seconds"]


def table(results: list[dict]) -> str:
    head = ["MP", "H x W", "plan", *STAGES, "image s", "est s", "+start", "e2e s", "tol s", "MP/s", "peak MB",
            "non-model"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        t = r["timings"]
        mp = r["height"] * r["width"] / 1e6
        cells = [
            f"{mp:g}",
            f"{r['height']} x {r['width']}",
            f"{r['scales']} @{r['stride']}" + (f" x{r['flips']}" if r.get("flips", 1) > 1 else ""),
            *(f"{t.get(k, 0.0):.2f}" for k in STAGES),
            f"{r['seconds']:.1f}",
            f"{r['estimate']:.1f}",
            f"{r['startup']:.1f}",
            f"{r['end_to_end']:.1f}",
            f"{r['tolerance']:.0f}",
            f"{mp / r['seconds']:.3f}",
            f"{r['peak_rss'] / 2**20:.0f}",
            f"{non_model_share(r):.1%}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def projected_share(r: dict, dense_post: float) -> float:
    """Non-model share with the measured watershed replaced by the dense-map rate."""
    t = r["timings"]
    post = dense_post * r["height"] * r["width"] / 1e6
    non_model = sum(t.get(k, 0.0) for k in NON_MODEL) - t.get("postprocess", 0.0) + post
    return non_model / (r["seconds"] - t.get("postprocess", 0.0) + post)


def verdicts(
    results: list[dict], comparison: dict | None, dense_post: float | None, split: tuple[float, float] | None = None
) -> list[str]:
    out = []
    if dense_post is not None:
        out.append(f"watershed on a dense cell map: {dense_post:.3f} s per MP")
    if split is not None:
        out.append(f"seed split where every seed holds two cells (its worst case): {split[1] - split[0]:+.3f} s per MP "
                   f"(watershed {split[0]:.3f}, with the split {split[1]:.3f})")
    for r in results:
        mp = r["height"] * r["width"] / 1e6
        fits = "within" if r["end_to_end"] <= r["tolerance"] else "OVER"
        out.append(f"{mp:g} MP: end to end {r['end_to_end']:.1f} s {fits} tolerance {r['tolerance']:.0f} s; "
                   f"peak {r['peak_rss'] / 1e9:.2f} GB"
                   + (f" ({'under' if r['peak_rss'] < TARGET_PEAK_BYTES else 'OVER'} 3 GB)" if mp >= 50 else ""))
        if any(abs(r["megapixels"] - s) < 1e-9 for s in SHARE_SIZES):
            share = non_model_share(r)
            out.append(f"  non-model share {share:.1%} ({'meets' if share <= TARGET_SHARE else 'misses'} "
                       f"the {TARGET_SHARE:.0%} target)")
            if dense_post is not None:
                dense = projected_share(r, dense_post)
                out.append(f"  with a dense cell map's watershed instead: {dense:.1%} "
                           f"({'meets' if dense <= TARGET_SHARE else 'misses'} the target)")
    if comparison:
        c = comparison
        out.append(
            f"ORT {c['ort']:.2f} s vs PyTorch {c['torch']} eager {c['eager']:.2f} s per batch of {c['batch']} x "
            f"{c['window']}^2: {c['ratio']:.2f}x ({'meets' if c['ratio'] >= TARGET_RATIO else 'misses'} the "
            f"{TARGET_RATIO}x target; max |diff| {c['max_abs_diff']:.1e})"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(f"{s:g}" for s in DEFAULT_SIZES),
                        help="comma-separated megapixels (square images)")
    parser.add_argument("--model", type=Path, help="ONNX model file or weights folder (default: weights/)")
    parser.add_argument("--mode", default="challenge", choices=list(MODES), help="the app's --mode (default challenge)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "int8"),
                        help="model file of the weights folder (as predict --precision; default auto)")
    parser.add_argument("--budget", default=None,
                        help="auto, none or seconds (as predict --budget; default: the mode's)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime / torch threads (0: all cores)")
    parser.add_argument("--workers", type=int, help="post-processing threads on the whole-slide path")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per engine in the comparison")
    parser.add_argument("--no-compare", action="store_true", help="skip ONNX Runtime vs PyTorch eager")
    parser.add_argument("--json-out", type=Path, help="also write all measurements as JSON")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child is not None:
        child(args.child, args.model, args.mode, args.budget, args.threads, args.workers, args.json)
        return 0

    from app.config import InferenceConfig
    from app.runner import resolve_model

    cfg = InferenceConfig()
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.model is not None:
            model, what = resolve_model(args.model, "cpu", args.precision), str(args.model)
        else:
            model, what = default_model(workdir, args.precision)
        budget = f", budget {args.budget}" if args.budget else ""
        print(f"model: {what} ({model.name}); mode {args.mode}{budget}; {os.cpu_count()} CPU cores", flush=True)
        results = []
        for mp in sizes:
            results.append(run_size(mp, model, args, workdir))
            r = results[-1]
            print(f"  {mp:g} MP done: {r['seconds']:.1f} s, plan {r['plan']}", flush=True)
    dense_post = dense_post_seconds_per_mp()
    split = paired_split_seconds_per_mp()
    comparison = None if args.no_compare else compare_engines(cfg.batch_size, cfg.window, args.repeats, args.threads)
    print()
    print(table(results))
    print()
    for line in verdicts(results, comparison, dense_post, split):
        print(line)
    if args.json_out is not None:
        everything = {"sizes": results, "comparison": comparison, "dense_post_s_per_mp": dense_post,
                      "paired_split_s_per_mp": split}
        args.json_out.write_text(json.dumps(everything, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
