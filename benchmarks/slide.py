"""Streamed slides: time, peak memory and F1 of `app predict` on generated gigapixel slides.

    python -m benchmarks.slide                          # 0.1, 1.6 and 6.4 GP, patches of cells on 2% of the glass
    python -m benchmarks.slide --sizes 0.1 --app-args "--flips 1 --scale-mode fixed --scales 1 --budget none"
    python -m benchmarks.slide --sizes 1.6 --workdir /big/disk --keep
    python -m benchmarks.slide --sizes 0.024 --cells 1 --compare   # a mosaic: streamed against the in-memory path

Each slide is square, RGB, a tiled zlib BigTIFF with pyramid levels (each a quarter of the last, down to about
a thousand pixels): flat glass with square patches of stained tissue (`--cells`: the share of the slide they
cover), each holding nuclei of known labels (ellipses of 20-32 px on a jittered 40-px grid, none touching).
Slide and ground truth (a tiled uint32 BigTIFF) are written tile by tile, with one compressed blank tile for all
the glass, so neither is ever whole in memory: the generator holds only the cells' geometry.

Each slide then runs through `python -m app predict` in a fresh process (`--slide-threshold-pixels 0`: streamed
whatever its size), timed around the whole command (start-up, overview, tiles, writing); `of which tiles` and
`of which writing` are the report's `segment_s` and `write_s` (the in-memory path's segmentation is not one
column); `peak MB` is that process's peak resident memory in MiB (its own `wait4` usage, Linux). F1 follows
the challenge's rule for large images: 2000-pixel tiles, border cells removed per tile, TP/FP/FN summed; the
labels are read back tile by tile.
`--compare` runs the same slide through the in-memory whole-slide path as well (default settings: a slide below
its 150 MP cap is read whole); `--cells 1` covers the whole slide with patches, a mosaic of cells.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.metric import match_counts
from app.pipeline import read_report
from app.slides.source import Slide

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_SIZES = (0.1, 1.6, 6.4)
DEFAULT_SHARE = 0.02
DEFAULT_APP_ARGS = "--flips 1 --scale-mode fixed --scales 1 --budget none"
TILE = 256  # tiles of the generated files
PATCH = 1500  # side of a tissue patch
SPACING = 40  # nucleus grid inside a patch
RADII = (10, 16)  # nucleus half-axes, px
JITTER = 3  # nucleus centre offset from its grid point, px (radius + jitter < spacing / 2: no two touch)
GLASS = (242, 240, 244)
TISSUE = (222, 204, 226)
NUCLEUS = (120, 70, 150)
NOISE = 12  # tissue and nuclei get uniform noise 0..NOISE subtracted; glass is flat
PYRAMID_FACTOR = 4
PYRAMID_MIN_SIDE = 1024
EVAL_TILE = 2000  # the challenge's tiled evaluation (app.config.CHALLENGE.eval_tile)


def side_for(gigapixels: float) -> int:
    return int(round(math.sqrt(gigapixels * 1e9)))


@dataclass(frozen=True)
class Scene:
    """A slide's content: patch corners and its nuclei (centre, half-axes, angle, label), bucketed by tile."""

    side: int
    patch: int  # side of a patch
    patches: np.ndarray  # P×2 (y, x) top-left corners
    cells: np.ndarray  # N×5 float64: cy, cx, ry, rx, angle
    buckets: dict[tuple[int, int], np.ndarray]  # (tile row, tile col) -> indices of cells whose box meets it


def make_scene(side: int, share: float, seed: int = 0, patch: int = PATCH) -> Scene:
    """Patches of `patch` px covering about `share` of the slide (at least one), placed at random without
    overlap (a share of 1 or more: a regular grid of them over the whole slide, a mosaic), filled with nuclei on
    a jittered grid; labels are 1..N in generation order."""
    rng = np.random.default_rng(seed)
    count = max(1, round(share * side * side / patch**2))
    starts = range(SPACING, side - patch - SPACING + 1, patch + SPACING)
    corners: list[tuple[int, int]] = [(y, x) for y in starts for x in starts] if share >= 1 else []
    tries = 0
    while len(corners) < count and tries < 100 * count and share < 1:
        tries += 1
        y, x = (int(v) for v in rng.integers(SPACING, side - patch - SPACING, 2))
        if all(abs(y - a) > patch + SPACING or abs(x - b) > patch + SPACING for a, b in corners):
            corners.append((y, x))
    rows = []
    grid = np.arange(SPACING // 2, patch - SPACING // 2 + 1, SPACING)
    for y, x in corners:
        gy, gx = np.meshgrid(grid, grid, indexing="ij")
        n = gy.size
        jitter = rng.integers(-JITTER, JITTER + 1, (n, 2))
        radii = rng.uniform(*RADII, (n, 2))
        angle = rng.uniform(0, math.pi, n)
        rows.append(np.column_stack([y + gy.ravel() + jitter[:, 0], x + gx.ravel() + jitter[:, 1], radii, angle]))
    cells = np.concatenate(rows) if rows else np.zeros((0, 5))
    buckets: dict[tuple[int, int], list[int]] = {}
    reach = RADII[1] + 1
    for i, (cy, cx, *_) in enumerate(cells):
        for ty in range(int(cy - reach) // TILE, int(cy + reach) // TILE + 1):
            for tx in range(int(cx - reach) // TILE, int(cx + reach) // TILE + 1):
                buckets.setdefault((ty, tx), []).append(i)
    return Scene(side, patch, np.asarray(corners, np.int64).reshape(-1, 2), cells,
                 {k: np.asarray(v, np.int64) for k, v in buckets.items()})


def render(scene: Scene, y0: int, x0: int, h: int, w: int, cells: np.ndarray, seed: int, factor: int = 1
           ) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB, uint32 labels) of the region [y0, y0+h) × [x0, x0+w) of the slide at 1/`factor` resolution
    (the geometry scaled down; noise at full resolution only), drawing `cells`."""
    image = np.empty((h, w, 3), np.uint8)
    image[:] = GLASS
    labels = np.zeros((h, w), np.uint32)
    tissue = np.zeros((h, w), bool)
    side = math.ceil(scene.patch / factor)
    for py, px in scene.patches // factor:
        a, b = max(py, y0) - y0, min(py + side, y0 + h) - y0
        c, d = max(px, x0) - x0, min(px + side, x0 + w) - x0
        if a < b and c < d:
            tissue[a:b, c:d] = True
    if not tissue.any():
        return image, labels
    image[tissue] = TISSUE
    reach = RADII[1] / factor
    for i in cells:
        cy, cx, ry, rx, angle = scene.cells[i]
        cy, cx, ry, rx = (cy + 0.5) / factor - 0.5, (cx + 0.5) / factor - 0.5, ry / factor, rx / factor
        top, bottom = max(0, int(cy - reach) - 1 - y0), min(h, int(cy + reach) + 2 - y0)
        left, right = max(0, int(cx - reach) - 1 - x0), min(w, int(cx + reach) + 2 - x0)
        if top >= bottom or left >= right:
            continue
        yy, xx = np.mgrid[top + y0 : bottom + y0, left + x0 : right + x0]
        dy, dx = yy - cy, xx - cx
        u = dy * math.cos(angle) + dx * math.sin(angle)
        v = -dy * math.sin(angle) + dx * math.cos(angle)
        inside = (u / ry) ** 2 + (v / rx) ** 2 <= 1
        image[top:bottom, left:right][inside] = NUCLEUS
        labels[top:bottom, left:right][inside] = i + 1
    if factor == 1:
        noise = np.random.default_rng(seed).integers(0, NOISE + 1, (h, w, 3), dtype=np.uint8)
        image[tissue] -= noise[tissue]
    return image, labels


def _encode(array: np.ndarray) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.zlib_encode(np.ascontiguousarray(array).tobytes(), level=1))


def level_tiles(scene: Scene, factor: int, labels: bool) -> Iterator[bytes]:
    """Encoded tiles of the slide at 1/`factor` resolution, or of the ground truth (`labels`, full resolution),
    row by row; every tile away from the patches is the one blank tile."""
    side = math.ceil(scene.side / factor)
    blank = _encode(np.zeros((TILE, TILE), np.uint32) if labels else np.full((TILE, TILE, 3), GLASS, np.uint8))
    span = TILE * factor  # full-resolution pixels of one tile
    for ty in range(math.ceil(side / TILE)):
        for tx in range(math.ceil(side / TILE)):
            y0, x0 = ty * span, tx * span
            if not any(py < y0 + span and py + scene.patch > y0 and px < x0 + span and px + scene.patch > x0
                       for py, px in scene.patches):
                yield blank
                continue
            near = [scene.buckets[(a, b)] for a in range(y0 // TILE, (y0 + span - 1) // TILE + 1)
                    for b in range(x0 // TILE, (x0 + span - 1) // TILE + 1) if (a, b) in scene.buckets]
            cells = np.unique(np.concatenate(near)) if near else np.zeros(0, np.int64)
            image, truth = render(scene, ty * TILE, tx * TILE, TILE, TILE, cells, ty * 100_003 + tx, factor)
            yield _encode(truth if labels else image)


def write_slide(scene: Scene, image_path: Path, truth_path: Path) -> None:
    """The slide (pyramidal RGB BigTIFF) and its ground truth (uint32 BigTIFF), tile by tile."""
    import tifffile

    factors = [PYRAMID_FACTOR**k for k in range(1, 8) if scene.side / PYRAMID_FACTOR**k >= PYRAMID_MIN_SIDE]
    with tifffile.TiffWriter(image_path, bigtiff=True) as tiff:
        tiff.write(level_tiles(scene, 1, False), shape=(scene.side, scene.side, 3), dtype=np.uint8,
                   tile=(TILE, TILE), compression="zlib", photometric="rgb", subifds=len(factors), metadata=None)
        for factor in factors:
            size = math.ceil(scene.side / factor)
            tiff.write(level_tiles(scene, factor, False), shape=(size, size, 3), dtype=np.uint8, tile=(TILE, TILE),
                       compression="zlib", photometric="rgb", subfiletype=1, metadata=None)
    with tifffile.TiffWriter(truth_path, bigtiff=True) as tiff:
        tiff.write(level_tiles(scene, 1, True), shape=(scene.side, scene.side), dtype=np.uint32, tile=(TILE, TILE),
                   compression="zlib", photometric="minisblack", metadata=None)


def tiled_f1(truth_path: Path, pred_path: Path) -> tuple[int, int, int]:
    """(TP, FP, FN) by the challenge's rule for large images (2000-px tiles, border cells removed per tile),
    reading both label files tile by tile."""
    tp = fp = fn = 0
    with Slide(truth_path) as truth, Slide(pred_path) as pred:
        if (truth.height, truth.width) != (pred.height, pred.width):
            raise ValueError(f"prediction is {pred.height}x{pred.width}, truth {truth.height}x{truth.width}")
        for y in range(0, truth.height, EVAL_TILE):
            for x in range(0, truth.width, EVAL_TILE):
                g = _padded(truth.read(y, y + EVAL_TILE, x, x + EVAL_TILE)[..., 0])
                p = _padded(pred.read(y, y + EVAL_TILE, x, x + EVAL_TILE)[..., 0])
                if not g.any() and not p.any():
                    continue
                a, b, c = match_counts(g, p)
                tp, fp, fn = tp + a, fp + b, fn + c
    return tp, fp, fn


def _padded(part: np.ndarray) -> np.ndarray:
    out = np.zeros((EVAL_TILE, EVAL_TILE), part.dtype)
    out[: part.shape[0], : part.shape[1]] = part
    return out


def run_predict(input_dir: Path, output_dir: Path, model: Path, app_args: str, streamed: bool = True) -> dict:
    """`python -m app predict` in a fresh process (the slide streamed, or read whole by the in-memory path):
    wall seconds, peak resident bytes, exit code, its log."""
    output_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "app", "predict", "--input", str(input_dir), "--output", str(output_dir),
           "--model", str(model), "--report", str(output_dir / "report.csv"),
           *(["--slide-threshold-pixels", "0"] if streamed else []), *shlex.split(app_args)]
    start = time.perf_counter()
    with open(output_dir.parent / f"{output_dir.name}.log", "w+") as log:
        process = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        text = log.read()
    return {"seconds": seconds, "peak_bytes": usage.ru_maxrss * 1024, "code": process.returncode, "log": text}


def run_size(gigapixels: float, args: argparse.Namespace, workdir: Path) -> list[dict]:
    """Generate one slide, run it streamed (and with `args.compare` through the in-memory path too), score."""
    side = side_for(gigapixels)
    folder = workdir / f"slide_{side}"
    (folder / "in").mkdir(parents=True, exist_ok=True)
    (folder / "truth").mkdir(exist_ok=True)
    image, truth = folder / "in" / "slide.tif", folder / "truth" / "slide_label.tiff"
    start = time.perf_counter()
    scene = make_scene(side, args.cells, args.seed)
    write_slide(scene, image, truth)
    generate = time.perf_counter() - start
    print(f"  {gigapixels:g} GP ({side} x {side}): {len(scene.patches)} patches, {len(scene.cells)} cells, "
          f"generated in {generate:.0f} s ({image.stat().st_size / 1e6:.0f} MB)", flush=True)
    results = []
    for path in ("streamed", "in memory") if args.compare else ("streamed",):
        out = folder / f"out_{path.replace(' ', '_')}"
        run = run_predict(folder / "in", out, args.model, args.app_args, streamed=path == "streamed")
        if run["code"] != 0:
            print(run["log"], file=sys.stderr)
            raise SystemExit(f"predict failed with exit code {run['code']}")
        start = time.perf_counter()
        tp, fp, fn = tiled_f1(truth, out / "slide_label.tiff")
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        line = next((ln for ln in run["log"].splitlines() if ln.startswith("slide.tif ")), "")
        report = next(iter(read_report(out / "report.csv")), {})
        results.append({"gigapixels": gigapixels, "side": side, "path": path, "patches": len(scene.patches),
                        "cells": len(scene.cells), "seconds": run["seconds"], "peak_bytes": run["peak_bytes"],
                        "tp": tp, "fp": fp, "fn": fn, "f1": f1, "generate_s": generate,
                        "score_s": time.perf_counter() - start, "line": line, "tiles": report.get("tiles", ""),
                        "segment_s": float(report["segment_s"]) if report.get("segment_s") else None,
                        "write_s": float(report["write_s"])})
        if not args.keep:
            (out / "slide_label.tiff").unlink(missing_ok=True)
    if not args.keep:
        image.unlink(missing_ok=True)
        truth.unlink(missing_ok=True)
    return results


def table(results: list[dict]) -> str:
    lines = ["| GP | side | path | patches | cells | tiles segmented | seconds | of which tiles | of which writing "
             "| peak MB | TP | FP | FN | F1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['gigapixels']:g} | {r['side']} | {r['path']} | {r['patches']} | {r['cells']} | "
                     f"{r['tiles'] or '-'} | {r['seconds']:.0f} | "
                     f"{'-' if r['segment_s'] is None else format(r['segment_s'], '.0f')} | {r['write_s']:.1f} | "
                     f"{r['peak_bytes'] / 2**20:.0f} | {r['tp']} | {r['fp']} | {r['fn']} | {r['f1']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(f"{s:g}" for s in DEFAULT_SIZES),
                        help="comma-separated gigapixels (square slides)")
    parser.add_argument("--cells", type=float, default=DEFAULT_SHARE, help="share of the slide covered by tissue")
    parser.add_argument("--model", type=Path, default=ROOT / "weights", help="ONNX model file or weights folder")
    parser.add_argument("--app-args", default=DEFAULT_APP_ARGS, help="further options of app predict")
    parser.add_argument("--compare", action="store_true",
                        help="also run each slide through the in-memory path (below its 150 MP cap)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="where slides are generated (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the slides and labels (in --workdir)")
    parser.add_argument("--json-out", type=Path, help="also write the measurements as JSON")
    args = parser.parse_args(argv)

    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    print(f"model: {args.model}; app args: {args.app_args}; {os.cpu_count()} CPU cores", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for gigapixels in sizes:
            for r in run_size(gigapixels, args, args.workdir or Path(tmp)):
                results.append(r)
                print(f"  {gigapixels:g} GP {r['path']}: {r['seconds']:.0f} s, peak {r['peak_bytes'] / 2**20:.0f} MB, "
                      f"F1 {r['f1']:.4f}", flush=True)
                print(f"    {r['line']}", flush=True)
    print()
    print(table(results))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
