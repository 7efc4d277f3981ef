"""Time and peak memory of each optional output of `predict` (overlay, ROIs, GeoJSON, measurements) per map size.

    python -m benchmarks.extras                      # 1 and 100 MP, a cell every 30 px (about 110,000 at 100 MP)
    python -m benchmarks.extras --sizes 1 --spacing 20

Each size is a generated square label map of elliptic cells of varied size and orientation on a regular grid
(sequential labels, as the app writes them) with a noisy RGB image, made before anything is timed. Each extra
then runs alone through the app's own `pipeline.write_extras` into a temporary folder, exactly as
`predict --overlay` (etc.) runs it after the label file: computed, encoded and written atomically. ROIs and
GeoJSON each include tracing the outlines. A warm-up on a small map first loads the libraries the extras import
on first use (scikit-image's modules, Pillow, roifile), which a run pays once, not per image. `seconds` is its
wall time; `peak MB` the process's peak resident memory during it above the level before it, from the
kernel's high-water mark (`PeakMemory`, Linux), so the label map and image, already resident, are not counted.
(tracemalloc would slow the outline tracing several times over, and a sampling thread misses peaks inside C
calls that hold the GIL.)
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from app.config import EXTRA_SUFFIXES, InferenceConfig
from app.metric import relabel
from app.pipeline import write_extras

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_SIZES = (1.0, 100.0)
DEFAULT_SPACING = 30
PATTERN = 1020  # side of the generated patch that is repeated over larger maps


def side_for(megapixels: float) -> int:
    """Side of a square map of about `megapixels`."""
    return int(round(math.sqrt(megapixels * 1e6)))


def cell_map(side: int, spacing: int = DEFAULT_SPACING, seed: int = 0) -> np.ndarray:
    """int32 side × side label map: an ellipse (radii 0.2-0.45 × spacing, any angle) around every grid point.

    A patch of `PATTERN` pixels is drawn once and repeated with fresh labels per copy, so a 100 MP map takes
    seconds; the labels are made sequential (1..N) at the end.
    """
    rng = np.random.default_rng(seed)
    p = min(side, PATTERN - PATTERN % spacing)
    patch = np.zeros((p, p), np.int32)
    yy, xx = np.mgrid[-spacing // 2 : spacing // 2, -spacing // 2 : spacing // 2]
    count = 0
    for cy in range(spacing // 2, p - spacing // 2 + 1, spacing):
        for cx in range(spacing // 2, p - spacing // 2 + 1, spacing):
            a, b = rng.uniform(0.2, 0.45, 2) * spacing
            angle = rng.uniform(0, np.pi)
            u = (yy * np.cos(angle) + xx * np.sin(angle)) / a
            v = (-yy * np.sin(angle) + xx * np.cos(angle)) / b
            count += 1
            box = patch[cy - spacing // 2 : cy + spacing // 2, cx - spacing // 2 : cx + spacing // 2]
            box[u * u + v * v <= 1] = count
    copies = math.ceil(side / p)
    labels = np.zeros((side, side), np.int32)
    for i in range(copies):
        for j in range(copies):
            block = labels[i * p : (i + 1) * p, j * p : (j + 1) * p]
            part = patch[: block.shape[0], : block.shape[1]]
            np.add(part, count * (i * copies + j), out=block, where=part > 0)
    return relabel(labels)


def noisy_image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """uint8 H×W×3 noise (a repeated patch), standing in for the normalised image."""
    rng = np.random.default_rng(seed)
    patch = rng.integers(0, 256, (min(shape[0], PATTERN), min(shape[1], PATTERN), 3), dtype=np.uint8)
    reps = (math.ceil(shape[0] / patch.shape[0]), math.ceil(shape[1] / patch.shape[1]), 1)
    return np.ascontiguousarray(np.tile(patch, reps)[: shape[0], : shape[1]])


class PeakMemory:
    """Context manager: the peak resident memory of this process during the block, above its level on entry
    (`.extra`, bytes), from the kernel's own high-water mark (Linux: /proc/self/status VmHWM, reset on entry
    through /proc/self/clear_refs), so no short-lived peak is missed and the process's history does not count.

    On entry, memory freed earlier but still held by the C allocator is handed back first (glibc `malloc_trim`),
    so the block cannot reuse it unseen.
    """

    def __enter__(self) -> "PeakMemory":
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: nothing to hand back
            pass
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset the high-water mark to the current resident size
        self.base = _status_bytes("VmRSS")
        self.peak = self.base
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = _status_bytes("VmHWM")

    @property
    def extra(self) -> int:
        return self.peak - self.base


def _status_bytes(field: str) -> int:
    """A memory figure of /proc/self/status (reported in kB) in bytes."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def run_extra(name: str, labels: np.ndarray, image: np.ndarray, cfg: InferenceConfig, folder: Path) -> dict:
    """One extra through `write_extras`: seconds, peak extra resident bytes, file size, the row it filled."""
    row: dict = {}
    with PeakMemory() as memory:
        t0 = time.perf_counter()
        failures = write_extras(folder / "bench.png", folder, labels, image, [name], cfg, row, {})
        seconds = time.perf_counter() - t0
    if failures:
        raise RuntimeError(failures[0])
    size = (folder / f"bench{EXTRA_SUFFIXES[name]}").stat().st_size
    return {"extra": name, "seconds": seconds, "peak": memory.extra, "bytes": size, "summary": row}


def table(rows: list[dict]) -> str:
    """Markdown table of the measurements."""
    lines = [
        "| MP | H x W | cells | label map MB | extra | file | seconds | peak MB | file MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mp']:g} | {r['side']} x {r['side']} | {r['cells']} | {r['map_mb']:.0f} | {r['extra']} | "
            f"`{EXTRA_SUFFIXES[r['extra']]}` | {r['seconds']:.2f} | {r['peak'] / 1e6:.0f} | {r['bytes'] / 1e6:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(f"{s:g}" for s in DEFAULT_SIZES),
                        help="megapixels, comma-separated")
    parser.add_argument("--spacing", type=int, default=DEFAULT_SPACING, help="grid step between cells, px")
    parser.add_argument("--extras", default=",".join(EXTRA_SUFFIXES), help="which extras, comma-separated")
    args = parser.parse_args(argv)
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    names = [n for n in args.extras.split(",") if n.strip()]
    cfg = InferenceConfig()
    print(f"{os.cpu_count()} CPU cores; overlay max side {cfg.overlay_max_side}; a cell every {args.spacing} px",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: one-off imports are not the extras' cost
        small = cell_map(200, args.spacing)
        write_extras(Path(tmp) / "warm.png", Path(tmp), small, noisy_image(small.shape), names, cfg, {}, {})
    rows = []
    for mp in sizes:
        side = side_for(mp)
        t0 = time.perf_counter()
        labels = cell_map(side, args.spacing)
        image = noisy_image(labels.shape)
        cells = int(labels.max())
        print(f"  {mp:g} MP: {cells} cells generated in {time.perf_counter() - t0:.1f} s", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                result = run_extra(name, labels, image, cfg, Path(tmp))
                result.update(mp=mp, side=side, cells=cells, map_mb=labels.nbytes / 1e6)
                rows.append(result)
                print(f"    {name}: {result['seconds']:.2f} s, peak {result['peak'] / 1e6:.0f} MB", flush=True)
        del labels, image
    print()
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
