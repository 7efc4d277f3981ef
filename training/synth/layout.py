"""Placing cells into an instance label map with occlusion resolved, so the labels are exact.

Cells are placed one at a time by rejection: a candidate is refused when too much of it would be hidden
behind cells already placed. An accepted cell goes *behind* the earlier ones: only its visible pixels get
its id. Renderers then draw each cell from its visible pixels, so image and labels agree by construction.
`finalize` keeps each cell's largest visible piece and drops slivers, leaving ids 1..N.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from training.synth.fields import smooth_noise

ShapeFn = Callable[[], np.ndarray]
SPARSE_GAP = 2  # px kept free around each cell in sparse fields
MAX_CONSECUTIVE_FAILURES = 150


def place_cells(
    rng: np.random.Generator,
    shape_hw: tuple[int, int],
    kind: str,
    shape_fn: ShapeFn,
    diameter: float,
    coverage: float,
    overlap: float,
    occupied: np.ndarray | None = None,
) -> np.ndarray:
    """Label map (int32, 0 = background) of cells drawn by `shape_fn` and placed per layout `kind`.

    `occupied` marks pixels already taken (e.g. by labelled cells when placing look-alikes): new cells go
    behind them and may hide at most the fraction `overlap` of their area (0 and a gap in sparse fields).
    """
    h, w = shape_hw
    labels = np.zeros((h, w), dtype=np.int32)
    occ = np.zeros((h, w), dtype=bool) if occupied is None else occupied.astype(bool).copy()
    keepout = ndi.binary_dilation(occ, iterations=SPARSE_GAP) if kind == "sparse" else occ
    target = coverage * h * w
    centre = _centre_sampler(rng, h, w, kind, diameter)
    allowed = 0.0 if kind == "sparse" else overlap
    mean_area = max(np.pi / 4.0 * diameter**2 * 0.6, 4.0)
    max_attempts = int(8 * target / mean_area) + 200
    covered, failures, next_id = 0, 0, 1
    for _ in range(max_attempts):
        if covered >= target or failures >= MAX_CONSECUTIVE_FAILURES:
            break
        mask = shape_fn()
        cy, cx = centre()
        top, left = int(round(cy - mask.shape[0] / 2)), int(round(cx - mask.shape[1] / 2))
        box, m = _clip(mask, top, left, h, w)
        if m is None:
            failures += 1
            continue
        region = occ[box]
        if kind == "sparse":
            refused = bool((keepout[box] & m).any())
        else:
            refused = (region & m).sum() > allowed * m.sum()
        if refused:
            failures += 1
            continue
        visible = m & ~region
        labels[box][visible] = next_id
        occ[box] |= visible
        if kind == "sparse":
            _mark_gap(keepout, mask, top, left)
        covered += int(visible.sum())
        next_id += 1
        failures = 0
    return labels


def tessellate(
    rng: np.random.Generator, shape_hw: tuple[int, int], diameter: float, fill: tuple[float, float] = (0.5, 0.85)
) -> np.ndarray:
    """Dense monolayer: a jittered hexagonal Voronoi tiling with wavy borders and some gaps.

    Each cell keeps the pixels of its Voronoi region within a random radius of its seed (`fill` is that
    radius as a fraction of the spacing), so some cells touch all neighbours and others leave gaps.
    """
    h, w = shape_hw
    s = max(diameter * 0.9, 4.0)
    pad = int(np.ceil(s))
    rows = np.arange(-pad, h + pad, s * np.sqrt(3) / 2)
    seeds = []
    for i, y in enumerate(rows):
        xs = np.arange(-pad + (s / 2 if i % 2 else 0.0), w + pad, s)
        seeds.append(np.stack([np.full_like(xs, y), xs], axis=1))
    pts = np.concatenate(seeds) + rng.normal(0.0, 0.18 * s, size=(sum(len(p) for p in seeds), 2))
    grid = np.zeros((h + 2 * pad, w + 2 * pad), dtype=bool)
    ij = np.clip(np.round(pts + pad).astype(int), 0, np.array(grid.shape) - 1)
    grid[ij[:, 0], ij[:, 1]] = True
    _, (near_y, near_x) = ndi.distance_transform_edt(~grid, return_indices=True)
    seed_id = np.zeros(grid.shape, dtype=np.int32)
    seed_id[ij[:, 0], ij[:, 1]] = np.arange(1, len(ij) + 1)
    radius = np.concatenate([[0.0], s * rng.uniform(*fill, size=len(ij))])
    amp = 0.22 * s
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    wy = yy + pad + amp * smooth_noise(rng, (h, w), s * 0.6)
    wx = xx + pad + amp * smooth_noise(rng, (h, w), s * 0.6)
    iy = np.clip(np.round(wy).astype(int), 0, grid.shape[0] - 1)
    ix = np.clip(np.round(wx).astype(int), 0, grid.shape[1] - 1)
    ny, nx = near_y[iy, ix], near_x[iy, ix]
    ids = seed_id[ny, nx]
    dist = np.hypot(wy - ny, wx - nx)
    return np.where(dist <= radius[ids], ids, 0).astype(np.int32)


def finalize(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Keep each cell's largest 8-connected piece, drop cells under `min_area` px, renumber 1..N."""
    out = np.zeros_like(labels, dtype=np.int32)
    next_id = 1
    eight = np.ones((3, 3), dtype=bool)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        mine = labels[sl] == i
        pieces, n = ndi.label(mine, structure=eight)
        if n > 1:
            sizes = np.bincount(pieces.ravel())[1:]
            mine = pieces == (int(np.argmax(sizes)) + 1)
        if mine.sum() < min_area:
            continue
        out[sl][mine] = next_id
        next_id += 1
    return out


def _centre_sampler(rng: np.random.Generator, h: int, w: int, kind: str, diameter: float) -> Callable[[], tuple]:
    """Draw cell centres: uniform (sparse, packed) or around random cluster centres (clustered)."""
    margin = diameter / 2.0
    if kind != "clustered":
        return lambda: (rng.uniform(-margin, h + margin), rng.uniform(-margin, w + margin))
    n_clusters = max(1, int(round(h * w / (diameter * rng.uniform(4.0, 10.0)) ** 2)))
    centres = np.stack([rng.uniform(0, h, n_clusters), rng.uniform(0, w, n_clusters)], axis=1)
    spread = diameter * rng.uniform(0.8, 2.5)

    def draw() -> tuple[float, float]:
        c = centres[rng.integers(n_clusters)]
        return float(c[0] + rng.normal(0, spread)), float(c[1] + rng.normal(0, spread))

    return draw


def _clip(mask: np.ndarray, top: int, left: int, h: int, w: int) -> tuple[tuple[slice, slice], np.ndarray | None]:
    """Image slice and the part of `mask` inside the image when placed at (top, left); None if outside."""
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + mask.shape[0], h), min(left + mask.shape[1], w)
    if y1 <= y0 or x1 <= x0:
        return (slice(0, 0), slice(0, 0)), None
    m = mask[y0 - top : y1 - top, x0 - left : x1 - left]
    if not m.any():
        return (slice(0, 0), slice(0, 0)), None
    return (slice(y0, y1), slice(x0, x1)), m


def _mark_gap(keepout: np.ndarray, mask: np.ndarray, top: int, left: int) -> None:
    """Mark a placed cell dilated by `SPARSE_GAP` px in `keepout` (in place): the sparse-field gap."""
    g = SPARSE_GAP
    grown = ndi.binary_dilation(np.pad(mask, g), iterations=g)
    box, m = _clip(grown, top - g, left - g, *keepout.shape)
    if m is not None:
        keepout[box] |= m
