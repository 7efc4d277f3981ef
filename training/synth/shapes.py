"""Single-cell masks in a tight local box: round nuclei to irregular, elongated, rod, bent and lobed cells.

Every function returns a boolean array whose True pixels are the cell; `diameter` is the cell's size across
its longest extent (rods: their length). Shapes are drawn at random orientations.
"""

from __future__ import annotations

import numpy as np

N_ANGLES = 96


def radial_shape(
    rng: np.random.Generator, diameter: float, elongation: float, roughness: float, harmonics: int = 7
) -> np.ndarray:
    """Star-convex cell: a random radial profile r(θ) (low Fourier modes), stretched and rotated.

    Small `roughness` gives round nuclei; large values give irregular, non-convex outlines. Pixels are
    tested in polar coordinates of the unstretched frame, which is exact for star-convex outlines.
    """
    theta = np.linspace(0.0, 2.0 * np.pi, N_ANGLES, endpoint=False)
    k = np.arange(2, harmonics + 1)[:, None]
    amp = roughness * rng.standard_normal(k.shape) / k**1.1
    phase = rng.uniform(0.0, 2.0 * np.pi, k.shape)
    r = np.clip(1.0 + (amp * np.cos(k * theta[None, :] + phase)).sum(axis=0), 0.35, 1.8)
    sx, sy = np.sqrt(elongation), 1.0 / np.sqrt(elongation)
    x, y = r * np.cos(theta) * sx, r * np.sin(theta) * sy
    scale = diameter / max(np.ptp(x), np.ptp(y), 1e-6)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    half = int(np.ceil(scale * max(np.abs(x).max(), np.abs(y).max()))) + 1
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    ca, sa = np.cos(angle), np.sin(angle)
    u = (ca * xx + sa * yy) / (scale * sx)
    v = (-sa * xx + ca * yy) / (scale * sy)
    rho, phi = np.hypot(u, v), np.mod(np.arctan2(v, u), 2.0 * np.pi)
    limit = np.interp(phi, theta, r, period=2.0 * np.pi)
    return _trim(rho <= limit)


def capsule(rng: np.random.Generator, diameter: float, aspect: float, bend: float) -> np.ndarray:
    """Rod with round caps along a circular arc; `bend` is the arc's total turning angle in radians."""
    length = max(diameter, 3.0)
    width = max(length / max(aspect, 1.0), 2.5)
    spine = max(length - width, 0.5)
    t = np.linspace(-0.5, 0.5, max(int(spine * 2), 4)) * spine
    if abs(bend) > 1e-3:
        radius = spine / bend
        cx, cy = radius * np.sin(t / radius), radius * (1.0 - np.cos(t / radius))
    else:
        cx, cy = t, np.zeros_like(t)
    angle = rng.uniform(0.0, np.pi)
    ca, sa = np.cos(angle), np.sin(angle)
    px, py = ca * cx - sa * cy, sa * cx + ca * cy
    half = width / 2.0
    x0, x1 = px.min() - half - 1, px.max() + half + 1
    y0, y1 = py.min() - half - 1, py.max() + half + 1
    ys, xs = np.mgrid[int(np.floor(y0)) : int(np.ceil(y1)) + 1, int(np.floor(x0)) : int(np.ceil(x1)) + 1]
    d2 = (xs[..., None] - px) ** 2 + (ys[..., None] - py) ** 2
    return _trim(d2.min(axis=2) <= half * half)


def lobed(rng: np.random.Generator, diameter: float) -> np.ndarray:
    """Union of two or three overlapping ellipses: kidney, dumbbell and lobed (granulocyte-like) cells."""
    n = int(rng.integers(2, 4))
    lobe = diameter / (0.9 + 0.35 * n)
    centres = [np.zeros(2)]
    direction = rng.uniform(0.0, 2.0 * np.pi)
    for _ in range(n - 1):
        direction += rng.uniform(-1.2, 1.2)
        step = lobe * rng.uniform(0.45, 0.75)
        centres.append(centres[-1] + step * np.array([np.cos(direction), np.sin(direction)]))
    pts = np.concatenate([np.asarray(c) for c in centres]).reshape(-1, 2)
    pts = pts - pts.mean(axis=0)
    half = int(np.ceil(np.abs(pts).max() + 0.65 * lobe)) + 1
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    mask = np.zeros(xx.shape, dtype=bool)
    for cx, cy in pts:
        a = lobe / 2.0 * rng.uniform(0.9, 1.2)
        b = a * rng.uniform(0.65, 1.0)
        rot = rng.uniform(0.0, np.pi)
        du, dv = xx - cx, yy - cy
        u = np.cos(rot) * du + np.sin(rot) * dv
        v = -np.sin(rot) * du + np.cos(rot) * dv
        mask |= (u / a) ** 2 + (v / b) ** 2 <= 1.0
    return _trim(mask)


def random_shape(rng: np.random.Generator, kind: str, diameter: float) -> np.ndarray:
    """One cell mask of the given kind (see `params.SHAPE_KINDS`)."""
    if kind == "round":
        return radial_shape(rng, diameter, rng.uniform(1.0, 1.35), rng.uniform(0.0, 0.12))
    if kind == "irregular":
        return radial_shape(rng, diameter, rng.uniform(1.0, 2.5), rng.uniform(0.2, 0.5), harmonics=9)
    if kind == "ellipse":
        return radial_shape(rng, diameter, rng.uniform(1.5, 3.5), rng.uniform(0.0, 0.1))
    if kind == "rod":
        return capsule(rng, diameter, rng.uniform(2.0, 5.0), 0.0)
    if kind == "bent":
        return capsule(rng, diameter, rng.uniform(2.5, 5.0), rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 2.2))
    if kind == "lobed":
        return lobed(rng, diameter)
    raise ValueError(f"unknown shape kind {kind!r}")


def _trim(mask: np.ndarray) -> np.ndarray:
    """Crop to the bounding box of True pixels (a one-pixel mask if empty)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return np.ones((1, 1), dtype=bool)
    return mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
