"""One scene builder and renderer per modality: exact labels plus a clean, linear image in [0, 1].

Each renderer draws cells from their visible pixels in the label map (see `layout`), so every labelled cell
is visible and nothing outside the labels looks like a labelled cell, except where a modality needs
unlabelled look-alikes (brightfield's unstained cells, kept in `Scene.lookalikes`). The microscope (blur,
illumination, noise) is applied afterwards by `noise.acquire`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from training.synth import fields as F
from training.synth.layout import finalize, place_cells, tessellate
from training.synth.params import (
    BrightfieldParams,
    DicParams,
    FluorescenceParams,
    ModalityParams,
    PhaseParams,
    Range,
    Weights,
)
from training.synth.shapes import random_shape

MIN_DIAMETER, MAX_DIAMETER = 6.0, 110.0  # px: clip of per-cell diameters
MIN_AREA_FRACTION = 0.06  # visible pieces smaller than this share of a typical cell are dropped
MIN_AREA = 6  # px: absolute floor of that threshold
# Shapes drawn per population; placements reuse them in the 8 orientations of the square's symmetry group.
BANK_MIN, BANK_MAX = 24, 160
# Stain absorption directions in RGB optical-density space (Ruifrok and Johnston's H, E and DAB).
STAINS = {
    "hematoxylin": (0.65, 0.70, 0.29),
    "eosin": (0.07, 0.99, 0.11),
    "dab": (0.27, 0.57, 0.78),
    "giemsa": (0.55, 0.80, 0.24),
    "neutral": (0.58, 0.58, 0.58),
}


@dataclass
class Scene:
    """A rendered specimen: labels to write, unlabelled look-alikes, and the clean image."""

    modality: str
    style: str
    labels: np.ndarray  # int32 H×W, 0 = background, 1..N
    lookalikes: np.ndarray  # int32 H×W, cells that must NOT be labelled (zeros when none)
    clean: np.ndarray  # float32, H×W (grey modalities) or H×W×3 (RGB; fluorescence has R = 0)


def pick(rng: np.random.Generator, weights: Weights) -> str:
    """Draw one name from (name, weight) pairs."""
    p = np.array([w for _, w in weights], dtype=float)
    return weights[int(rng.choice(len(weights), p=p / p.sum()))][0]


def uniform(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


def log_uniform(rng: np.random.Generator, r: Range) -> float:
    return float(np.exp(rng.uniform(np.log(r[0]), np.log(r[1]))))


def draw_cells(
    rng: np.random.Generator,
    hw: tuple[int, int],
    layout: str,
    diameter: float,
    spread: float,
    shapes: Weights,
    coverage: float,
    overlap: float,
    occupied: np.ndarray | None = None,
) -> np.ndarray:
    """Exact label map of one population: one or two shape kinds, log-normal sizes, the given layout.

    A bank of shapes is drawn first and reused in random orientations, which keeps crowded fields of small
    cells (thousands per image) fast.
    """
    main = pick(rng, shapes)
    second = pick(rng, shapes)
    share = rng.uniform(0.0, 0.3)
    h, w = hw
    expected = coverage * h * w / max(np.pi / 4.0 * diameter**2 * 0.6, 4.0)
    bank = []
    for _ in range(int(np.clip(expected / 4.0, BANK_MIN, BANK_MAX))):
        kind = second if rng.random() < share else main
        d = float(np.clip(diameter * np.exp(rng.normal(0.0, spread)), MIN_DIAMETER, MAX_DIAMETER))
        bank.append(random_shape(rng, kind, d))

    def shape() -> np.ndarray:
        m = np.rot90(bank[int(rng.integers(len(bank)))], int(rng.integers(4)))
        return m[:, ::-1] if rng.random() < 0.5 else m

    if layout == "monolayer":
        labels = tessellate(rng, hw, diameter)
        if occupied is not None:
            labels[occupied] = 0
    else:
        labels = place_cells(rng, hw, layout, shape, diameter, coverage, overlap, occupied)
    min_area = max(MIN_AREA, int(MIN_AREA_FRACTION * np.pi / 4.0 * diameter**2))
    return finalize(labels, min_area)


def _population(rng: np.random.Generator, p: ModalityParams, hw: tuple[int, int], diameter: float) -> np.ndarray:
    """Labelled cells of an image drawn with the modality's own layouts, shapes and coverage."""
    return draw_cells(
        rng, hw, pick(rng, p.layouts), diameter, p.diameter_spread, p.shapes,
        uniform(rng, p.coverage), uniform(rng, p.touch_overlap),
    )


def _texture(rng: np.random.Generator, hw: tuple[int, int], diameter: float, amount: float) -> np.ndarray:
    """Multiplicative intracellular texture: coarse blotches plus fine grain, mean 1, never negative."""
    coarse = F.smooth_noise(rng, hw, max(diameter / 8.0, 1.0))
    fine = F.smooth_noise(rng, hw, 0.8)
    return np.clip(1.0 + amount * (0.8 * coarse + 0.5 * fine), 0.05, None).astype(np.float32)


def _cell_values(rng: np.random.Generator, n: int, sigma: float, floor: float) -> np.ndarray:
    """Log-normal per-cell factors with median 1 and a floor (uneven brightness between cells)."""
    return np.maximum(np.exp(rng.normal(0.0, sigma, n)), floor).astype(np.float32)


def _specks(rng: np.random.Generator, labels: np.ndarray, density: float, radius: Range) -> np.ndarray:
    """Small unlabelled blobs (debris) on the background, as a float mask of soft discs."""
    h, w = labels.shape
    n = rng.poisson(density * h * w)
    out = np.zeros((h, w), dtype=np.float32)
    if n == 0:
        return out
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    out[ys, xs] = 1.0
    r = uniform(rng, radius)
    out = ndi.gaussian_filter(out, r) * (2.0 * np.pi * r * r)
    far = F.outer_distance(labels) > 2.0 * r + 2.0
    return np.where(far, np.clip(out, 0.0, 1.0), 0.0).astype(np.float32)


def render_fluorescence(rng: np.random.Generator, p: FluorescenceParams, hw: tuple[int, int]) -> Scene:
    """Nuclei or cells glowing on a dark background; stored as RGB with an empty red channel."""
    style = pick(rng, p.styles)
    d = log_uniform(rng, p.diameter)
    labels = _population(rng, p, hw, d)
    n = int(labels.max())
    dist = F.inner_distance(labels)
    depth = F.normalised_depth(labels, dist)
    bright = _cell_values(rng, n, uniform(rng, p.brightness_sigma), p.min_brightness)
    mitotic = rng.random(n) < uniform(rng, p.bright_fraction)
    bright[mitotic] *= rng.uniform(1.8, 3.0, int(mitotic.sum()))
    per = F.per_cell(labels, bright)
    profile = F.edge_profile(dist, uniform(rng, p.edge_ramp))
    texture = _texture(rng, hw, d, uniform(rng, p.texture))
    nucleus = np.clip((depth - rng.uniform(0.35, 0.6)) / 0.2, 0.0, 1.0)
    if style == "nuclei":
        main = per * profile * (0.75 + 0.25 * depth) * texture
        second = np.zeros(hw, dtype=np.float32)
    else:
        dim_nucleus = rng.uniform(0.0, 0.5)
        main = per * profile * (1.0 - dim_nucleus * nucleus) * texture
        second = np.zeros(hw, dtype=np.float32)
        if style == "two_channel":
            second = F.per_cell(labels, _cell_values(rng, n, 0.3, 0.3)) * nucleus * _texture(rng, hw, d / 2, 0.3)
    glow = ndi.gaussian_filter(main, max(d / 2.0, 2.0)) * uniform(rng, p.haze)
    debris = _specks(rng, labels, uniform(rng, p.debris), (0.8, 1.8)) * rng.uniform(0.3, 1.5)
    level = uniform(rng, p.background)
    main = main + glow + debris + level * (1.0 + 0.3 * F.smooth_noise(rng, hw, max(hw) / 6.0))
    second = second + (level * 0.5 if style == "two_channel" else 0.0)
    scale = rng.uniform(0.25, 0.6)  # full scale relative to a median cell: bright cells may saturate
    green_first = rng.random() < 0.5 if style == "nuclei" else True
    rgb = np.zeros((*hw, 3), dtype=np.float32)
    if style == "nuclei":
        rgb[:, :, 1 if green_first else 2] = main * scale
    else:
        rgb[:, :, 1] = main * scale
        rgb[:, :, 2] = second * scale
    return Scene("fluorescence", style, labels, np.zeros_like(labels), np.clip(rgb, 0.0, 1.0))


def _transmission(od: dict[str, np.ndarray], white: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """Beer-Lambert: light through stains of given optical densities (base 10), H×W×3 in [0, 1]."""
    total = np.zeros((*next(iter(od.values())).shape, 3), dtype=np.float32)
    for name, density in od.items():
        v = np.asarray(STAINS[name], dtype=np.float32) + jitter
        v = np.clip(v, 0.02, None) / np.linalg.norm(np.clip(v, 0.02, None))
        total += density[:, :, None] * v[None, None, :]
    return (white[None, None, :] * np.power(10.0, -total)).astype(np.float32)


def render_brightfield(rng: np.random.Generator, p: BrightfieldParams, hw: tuple[int, int]) -> Scene:
    """Stained cells (labelled) on a light background among unstained look-alikes (not labelled)."""
    style = pick(rng, p.styles)
    coverage = uniform(rng, p.coverage)
    shapes = p.shapes
    if style == "smear":  # few round or lobed white cells, larger than the many red cells around them
        d, shapes, coverage = log_uniform(rng, p.smear_diameter), (("round", 3.0), ("lobed", 0.5)), coverage * 0.4
    else:
        d = log_uniform(rng, p.diameter)
    labels = draw_cells(
        rng, hw, pick(rng, p.layouts), d, p.diameter_spread, shapes, coverage, uniform(rng, p.touch_overlap)
    )
    n = int(labels.max())
    ratio = uniform(rng, p.lookalike_ratio)
    if style == "smear":
        look_d, look_layout = d * rng.uniform(0.5, 0.8), "packed"
        look_shapes: tuple[tuple[str, float], ...] = (("round", 1.0),)
        look_cover = rng.uniform(0.25, 0.55)
    else:
        look_d, look_shapes, look_layout = d * rng.uniform(0.8, 1.2), p.shapes, pick(rng, p.layouts)
        look_cover = min(coverage * ratio, 0.5)
    look = draw_cells(
        rng, hw, "packed" if look_layout == "monolayer" else look_layout, look_d, p.diameter_spread,
        look_shapes, look_cover, 0.1, occupied=labels > 0,
    )
    dist, ldist = F.inner_distance(labels), F.inner_distance(look)
    depth, ldepth = F.normalised_depth(labels, dist), F.normalised_depth(look, ldist)
    ramp = uniform(rng, p.edge_ramp)
    texture = _texture(rng, hw, d, uniform(rng, p.texture))
    cell_od = F.per_cell(labels, _cell_values(rng, n, 0.2, 0.6)) * uniform(rng, p.stained_od)
    cell_od = cell_od * F.edge_profile(dist, ramp) * texture
    faint = uniform(rng, p.unstained_od)
    look_od = F.per_cell(look, _cell_values(rng, int(look.max()), 0.2, 0.5)) * faint * F.edge_profile(ldist, ramp)
    od: dict[str, np.ndarray] = {}
    if style == "smear":
        # White cells: a dark, often lobed nucleus (depth perturbed by smooth noise) in pale cytoplasm.
        lobes = depth + 0.3 * F.smooth_noise(rng, hw, max(d / 6.0, 1.0))
        nucleus = np.clip((lobes - rng.uniform(0.3, 0.5)) / 0.1, 0.0, 1.0) * (labels > 0)
        od["giemsa"] = cell_od * (0.35 + 0.65 * nucleus)
        pallor = 1.0 - rng.uniform(0.3, 0.7) * np.clip(ldepth - 0.4, 0.0, 1.0) / 0.6
        od["eosin"] = look_od * pallor * rng.uniform(1.5, 3.0)
    elif style == "tissue":
        od["hematoxylin"] = cell_od + look_od
        lumen = F.smooth_noise(rng, hw, d * rng.uniform(2.0, 5.0)) > rng.uniform(0.3, 1.5)
        fibres = 0.6 + 0.5 * F.smooth_noise(rng, hw, max(d / 4.0, 1.5)) + 0.2 * F.smooth_noise(rng, hw, 1.5)
        stroma = uniform(rng, p.stroma_od) * np.clip(fibres, 0.0, None) * ~lumen
        od["eosin"] = np.where(labels > 0, 0.3, 1.0) * ndi.gaussian_filter(stroma.astype(np.float32), 1.0)
    else:
        stain = str(rng.choice(["hematoxylin", "dab", "giemsa"]))
        od[stain] = cell_od
        rim = np.where(look > 0, np.exp(-(ldist - 1.0) / 1.2), 0.0).astype(np.float32)
        od["neutral"] = 0.4 * look_od + 0.8 * faint * rim  # unstained: nearly clear, a refractive rim
    od["neutral"] = od.get("neutral", np.zeros(hw, np.float32)) + uniform(rng, p.background_od)
    white = rng.uniform(0.86, 0.97) * (1.0 + rng.uniform(-0.03, 0.03, 3))
    clean = _transmission(od, white.astype(np.float32), rng.normal(0.0, 0.04, 3).astype(np.float32))
    return Scene("brightfield", style, labels, look, np.clip(clean, 0.0, 1.0))


def render_phase(rng: np.random.Generator, p: PhaseParams, hw: tuple[int, int]) -> Scene:
    """Positive phase contrast: the high-pass of the optical path gives dark cells with bright halos."""
    style = pick(rng, p.styles)
    if style == "bacteria":
        d = log_uniform(rng, p.bacteria_length)
        labels = draw_cells(
            rng, hw, pick(rng, (("packed", 2.0), ("clustered", 1.5), ("sparse", 0.5))), d, 0.25,
            (("rod", 3.0), ("bent", 1.0)), rng.uniform(0.15, 0.6), rng.uniform(0.0, 0.1),
        )
    else:
        d = log_uniform(rng, p.diameter)
        labels = _population(rng, p, hw, d)
    n = int(labels.max())
    dist = F.inner_distance(labels)
    depth = F.normalised_depth(labels, dist)
    thickness = F.per_cell(labels, _cell_values(rng, n, 0.25, 0.4))
    nucleus = 0.0 if style == "bacteria" else 0.4 * np.clip((depth - 0.5) / 0.3, 0.0, 1.0)
    phi = thickness * F.edge_profile(dist, uniform(rng, p.edge_ramp)) * (0.6 + 0.4 * np.sqrt(depth) + nucleus)
    phi = phi * _texture(rng, hw, d, uniform(rng, p.texture))
    phi = phi + _specks(rng, labels, uniform(rng, p.debris), (0.8, 2.0)) * rng.uniform(0.3, 1.0)
    sigma = uniform(rng, p.halo_sigma) * (0.6 if style == "bacteria" else 1.0)
    high = phi - ndi.gaussian_filter(phi, sigma)
    bg = uniform(rng, p.background) * (1.0 + 0.04 * F.smooth_noise(rng, hw, max(hw) / 5.0))
    image = bg * (1.0 - 1.6 * uniform(rng, p.phase_depth) * high)
    # Rounded (mitotic) cells are thick: they look bright with a brighter rim instead of dark.
    rounded = F.per_cell(labels, (rng.random(n) < uniform(rng, p.bright_fraction)).astype(np.float32))
    image = image + rounded * bg * F.edge_profile(dist, 1.5) * (0.35 + 0.5 * (1.0 - depth))
    return Scene("phase", style, labels, np.zeros_like(labels), np.clip(image, 0.0, 1.0).astype(np.float32))


def dic_shading(thickness: np.ndarray, angle: float, shear: float) -> np.ndarray:
    """Directional derivative of the optical path along the shear direction (one side bright, one dark)."""
    smooth = ndi.gaussian_filter(thickness, shear)
    gy, gx = np.gradient(smooth)
    return (np.cos(angle) * gx + np.sin(angle) * gy).astype(np.float32)


def render_dic(rng: np.random.Generator, p: DicParams, hw: tuple[int, int]) -> Scene:
    """Relief shading on grey: each cell's dome-shaped thickness seen through its derivative."""
    d = log_uniform(rng, p.diameter)
    labels = _population(rng, p, hw, d)
    n = int(labels.max())
    dist = F.inner_distance(labels)
    depth = F.normalised_depth(labels, dist)
    dome = np.sqrt(np.clip(depth * (2.0 - depth), 0.0, 1.0)) * F.edge_profile(dist, uniform(rng, p.edge_ramp))
    nucleus = 0.35 * np.clip((depth - 0.45) / 0.35, 0.0, 1.0) ** 2
    thickness = F.per_cell(labels, _cell_values(rng, n, 0.25, 0.4)) * (dome + nucleus) * d / 4.0
    thickness = thickness * _texture(rng, hw, d, uniform(rng, p.texture))
    shade = dic_shading(thickness, rng.uniform(0.0, 2.0 * np.pi), uniform(rng, p.shear))
    inside = np.abs(shade[labels > 0])
    norm = float(np.percentile(inside, 98)) if inside.size else 1.0
    bg = uniform(rng, p.background) * (1.0 + 0.03 * F.smooth_noise(rng, hw, max(hw) / 5.0))
    image = bg + uniform(rng, p.relief) * shade / max(norm, 1e-6)
    image = image - uniform(rng, p.offset_contrast) * thickness / max(float(thickness.max()), 1e-6)
    return Scene("dic", "relief", labels, np.zeros_like(labels), np.clip(image, 0.0, 1.0).astype(np.float32))


RENDERERS: dict[str, Callable[[np.random.Generator, ModalityParams, tuple[int, int]], Scene]] = {
    "fluorescence": render_fluorescence,  # type: ignore[dict-item]
    "brightfield": render_brightfield,  # type: ignore[dict-item]
    "phase": render_phase,  # type: ignore[dict-item]
    "dic": render_dic,  # type: ignore[dict-item]
}


def render(rng: np.random.Generator, p: ModalityParams, hw: tuple[int, int]) -> Scene:
    """Scene of modality `p.name` at size `hw`."""
    return RENDERERS[p.name](rng, p, hw)
