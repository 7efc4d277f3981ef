"""Random views of a whole batch on the device: the CPU recipe of `training.augment`, batched.

Geometry is drawn on the host by the CPU recipe's own `sample_geometry` (scale, square source region that may
overhang the image, flips, quarter turns), then applied on the device in one go: the source regions of all crops
are gathered from the flat pixel buffer (zero outside the image), and each is resized and oriented by two small
matrices, `out = P · region · Qᵀ`. Their rows hold the triangle filter of width max(1, shrink factor) that
`torch.nn.functional.interpolate` uses (bilinear, antialiased when shrinking) or, for the class map, the source
pixel that nearest-neighbour resizing picks; flips reverse their rows and a quarter turn swaps them and
transposes the region. The result equals `training.augment.view` up to float rounding.

The photometric changes follow `training.augment.strong` in its order: stain (HED) shift of colour crops,
channel move of single-signal crops, brightness and contrast, gamma, Gaussian blur (reflect padding, the
kernel of torchvision's `gaussian_blur` for each crop's sigma), noise (one field for all channels) and
re-quantisation, each with the configured probability per crop. Their parameters are drawn on the host with
numpy; noise fields on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import hed_from_rgb, rgb_from_hed

from training.augment import draw_base_scale, sample_geometry
from training.config import AugmentConfig
from training.gpu_kit.pool import DevicePool

SINGLE_SIGNAL_TOLERANCE = 2.0 / 255.0  # as `training.augment.single_signal`
MIN_BLUR_SIGMA = 0.1  # smaller sigmas leave the crop alone, as in `training.augment.photometric`
GREY_WEIGHTS = (0.299, 0.587, 0.114)


def to_device(values: np.ndarray, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A host array on `device` without waiting for the device: a blocking copy from pageable memory would
    synchronise the stream and keep the host from queueing the next kernels, so CUDA copies go from pinned
    memory, asynchronously."""
    tensor = torch.from_numpy(np.ascontiguousarray(values))
    if dtype is not None:
        tensor = tensor.to(dtype)
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


# --- geometry --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CropPlan:
    """Where each crop of a batch comes from (host arrays, one value per crop)."""

    items: np.ndarray
    y0: np.ndarray
    x0: np.ndarray
    size: np.ndarray
    flip_y: np.ndarray
    flip_x: np.ndarray
    rot90: np.ndarray


def plan_crops(rng: np.random.Generator, pool: DevicePool, items: np.ndarray, cfg: AugmentConfig) -> CropPlan:
    """The CPU recipe's geometry for each item: base scale (`augment.diameter`), random scale, source square,
    flips and quarter turns."""
    geoms = [sample_geometry(rng, pool.shape(int(i)), cfg, draw_base_scale(rng, pool.diameters[int(i)], cfg))
             for i in items]
    return CropPlan(
        items=np.asarray(items, np.int64),
        y0=np.array([g.y0 for g in geoms], np.int64), x0=np.array([g.x0 for g in geoms], np.int64),
        size=np.array([g.size for g in geoms], np.int64),
        flip_y=np.array([g.flip_y for g in geoms]), flip_x=np.array([g.flip_x for g in geoms]),
        rot90=np.array([g.rot90 for g in geoms], np.int64),
    )


def gather_regions(
    flat: torch.Tensor, offsets: np.ndarray, heights: np.ndarray, widths: np.ndarray, plan: CropPlan, side: int
) -> torch.Tensor:
    """B×C×side×side float32 source regions from a flat P×C buffer (zero where a region overhangs its image)."""
    device = flat.device

    def column(values: np.ndarray) -> torch.Tensor:
        return to_device(np.asarray(values, np.int64), device)

    off, h, w = column(offsets), column(heights), column(widths)
    steps = torch.arange(side, device=device)
    ys = column(plan.y0)[:, None] + steps[None]
    xs = column(plan.x0)[:, None] + steps[None]
    inside = ((ys >= 0) & (ys < h[:, None]))[:, :, None] & ((xs >= 0) & (xs < w[:, None]))[:, None, :]
    rows = torch.minimum(ys.clamp(min=0), h[:, None] - 1)
    cols = torch.minimum(xs.clamp(min=0), w[:, None] - 1)
    index = off[:, None, None] + rows[:, :, None] * w[:, None, None] + cols[:, None, :]
    values = flat[index].float() * inside[..., None]
    return values.permute(0, 3, 1, 2).contiguous()


def resize_weights(sizes: torch.Tensor, out: int, side: int, nearest: bool) -> torch.Tensor:
    """B×out×side resizing matrices from sources of `sizes` pixels (columns past a source are zero).

    Bilinear: the triangle filter of half-width max(1, size/out) around each output pixel's centre, normalised
    over the source (what interpolate does with antialias when shrinking and without it when enlarging).
    Nearest: the pixel floor(j · size/out), as interpolate's "nearest" mode picks it."""
    device = sizes.device
    scale = sizes.to(torch.float32) / out
    j = torch.arange(out, device=device, dtype=torch.float32)
    if nearest:
        source = torch.minimum(torch.floor(j[None] * scale[:, None]).long(), sizes[:, None] - 1)
        picks = torch.zeros((sizes.shape[0], out, side), dtype=torch.float32, device=device)
        return picks.scatter_(2, source[:, :, None], 1.0)
    x = torch.arange(side, device=device, dtype=torch.float32)
    support = scale.clamp(min=1.0)
    centre = scale[:, None] * (j[None] + 0.5)
    distance = (x[None, None] + 0.5 - centre[:, :, None]).abs() / support[:, None, None]
    weights = (1.0 - distance).clamp(min=0.0) * (x[None, None] < sizes[:, None, None].to(torch.float32))
    return weights / weights.sum(-1, keepdim=True).clamp(min=1e-12)


def orient(rows: torch.Tensor, cols: torch.Tensor, plan: CropPlan) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P, Q, transpose) with rot90(flip(rows · R · colsᵀ)) = P · R' · Qᵀ, R' = Rᵀ where `transpose`."""
    device = rows.device

    def mask(values: np.ndarray) -> torch.Tensor:
        return to_device(values, device)[:, None, None]

    rows = torch.where(mask(plan.flip_y), rows.flip(1), rows)
    cols = torch.where(mask(plan.flip_x), cols.flip(1), cols)
    k = plan.rot90 % 4
    # Quarter turns of Y = A·R·Bᵀ (torch.rot90 over the last two axes): 1: B̃·Rᵀ·Aᵀ, 2: Ã·R·B̃ᵀ, 3: B·Rᵀ·Ãᵀ,
    # where ~ reverses a matrix's rows.
    first = torch.stack([rows, cols.flip(1), rows.flip(1), cols])
    second = torch.stack([cols, rows, cols.flip(1), rows.flip(1)])
    pick = to_device(k, device)
    batch = torch.arange(rows.shape[0], device=device)
    return first[pick, batch], second[pick, batch], to_device(k % 2 == 1, device)


def resample(regions: torch.Tensor, p: torch.Tensor, q: torch.Tensor, transpose: torch.Tensor) -> torch.Tensor:
    """B×C×out×out = P · R' · Qᵀ per crop (R' the region, transposed where asked)."""
    regions = torch.where(transpose[:, None, None, None], regions.transpose(-1, -2), regions)
    return p[:, None] @ regions @ q.transpose(-1, -2)[:, None]


def geometry(plan: CropPlan, crop: int, device: torch.device, nearest: bool) -> tuple[torch.Tensor, ...]:
    """The (P, Q, transpose) of every crop of a plan, for bilinear or nearest resizing."""
    sizes = to_device(plan.size, device)
    side = int(plan.size.max())
    matrix = resize_weights(sizes, crop, side, nearest)
    return orient(matrix, matrix, plan)


def image_views(pool: DevicePool, plan: CropPlan, crop: int) -> torch.Tensor:
    """B×3×crop×crop views in [0, 1] (geometry only: the weak view)."""
    side = int(plan.size.max())
    items = plan.items
    regions = gather_regions(pool.pixels, pool.pixel_offset[items], pool.heights[items], pool.widths[items], plan,
                             side)
    return resample(regions, *geometry(plan, crop, regions.device, False)) / 255.0


def target_views(pool: DevicePool, plan: CropPlan, crop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cls B×crop×crop int64, cell B×1×crop×crop, boundary B×1×crop×crop) of the same crops."""
    side = int(plan.size.max())
    items = plan.items
    regions = gather_regions(pool.targets, pool.target_offset[items], pool.heights[items], pool.widths[items], plan,
                             side)
    cls = resample(regions[:, :1], *geometry(plan, crop, regions.device, True))[:, 0].round().long()
    maps = resample(regions[:, 1:], *geometry(plan, crop, regions.device, False)).clamp(0.0, 1.0)
    return cls, maps[:, :1].contiguous(), maps[:, 1:].contiguous()


# --- photometric changes -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Photometric:
    """The strong view's random parameters, one value per crop (host arrays)."""

    stain: np.ndarray  # bool: perturb the stains (colour crops only)
    stain_scale: np.ndarray  # B×3
    stain_shift: np.ndarray  # B×3
    move: np.ndarray  # bool: move a single-signal crop's signal
    channels: np.ndarray  # 1..7: which channels carry it
    brightness: np.ndarray
    contrast: np.ndarray
    gamma: np.ndarray  # 1 = none
    blur_sigma: np.ndarray  # 0 = none
    noise_std: np.ndarray  # 0 = none
    levels: np.ndarray  # 0 = no re-quantisation


def draw_photometric(rng: np.random.Generator, n: int, cfg: AugmentConfig) -> Photometric:
    """Parameters of `n` strong views with the distributions of `training.augment.strong`."""

    def chance(p: float) -> np.ndarray:
        return rng.random(n) < p if p > 0 else np.zeros(n, bool)

    log_gamma = np.log1p(cfg.gamma)
    blur = chance(cfg.blur_p)
    sigma = np.where(blur, rng.uniform(0.0, cfg.blur_sigma, n), 0.0)
    noise = chance(cfg.noise_p)
    quantize = chance(cfg.quantize_p)
    return Photometric(
        stain=chance(cfg.stain_p),
        stain_scale=rng.uniform(1 - cfg.stain_scale, 1 + cfg.stain_scale, (n, 3)),
        stain_shift=rng.uniform(-cfg.stain_shift, cfg.stain_shift, (n, 3)),
        move=chance(cfg.channel_p),
        channels=rng.integers(1, 8, n),
        brightness=rng.uniform(1 - cfg.brightness, 1 + cfg.brightness, n),
        contrast=rng.uniform(1 - cfg.contrast, 1 + cfg.contrast, n),
        gamma=np.exp(rng.uniform(-log_gamma, log_gamma, n)) if cfg.gamma > 0 else np.ones(n),
        blur_sigma=np.where(sigma > MIN_BLUR_SIGMA, sigma, 0.0),
        noise_std=np.where(noise, rng.uniform(0.0, cfg.noise_std, n), 0.0),
        levels=np.where(quantize, rng.integers(cfg.quantize_levels, 257, n) - 1, 0),
    )


def _column(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """A host array as a B×1×1×1 float32 tensor on `like`'s device."""
    return to_device(np.asarray(values, np.float32), like.device)[:, None, None, None]


def channel_filled(images: torch.Tensor) -> torch.Tensor:
    """B×3: which channels carry any signal."""
    return images.flatten(2).amax(-1) > 0


def single_signal(images: torch.Tensor, tolerance: float = SINGLE_SIGNAL_TOLERANCE) -> torch.Tensor:
    """B: grey crops or those with one filled channel (the other filled ones equal to the first within
    `tolerance`), as `training.augment.single_signal`."""
    filled = channel_filled(images)
    first = torch.argmax(filled.to(torch.int8), dim=1)
    reference = images[torch.arange(images.shape[0], device=images.device), first]
    apart = (images - reference[:, None]).abs().flatten(2).amax(-1)
    return (filled.sum(1) <= 1) | ((apart <= tolerance) | ~filled).all(1)


def stained(images: torch.Tensor) -> torch.Tensor:
    """B: colour crops (all three channels carry signal and they differ)."""
    return channel_filled(images).all(1) & ~single_signal(images)


def stain_shift(images: torch.Tensor, draw: Photometric) -> torch.Tensor:
    """HED optical densities scaled and shifted for the drawn colour crops (`training.augment.stain_shift`)."""
    if not draw.stain.any():  # decided on the host: no device synchronisation
        return images
    device = images.device
    chosen = to_device(draw.stain, device) & stained(images)
    to_hed = to_device(hed_from_rgb, device, torch.float32)
    to_rgb = to_device(rgb_from_hed, device, torch.float32)
    scale = to_device(draw.stain_scale, device, torch.float32)[:, :, None, None]
    shift = to_device(draw.stain_shift, device, torch.float32)[:, :, None, None]
    density = -torch.log(images.clamp(1.0 / 255.0, 1.0))
    stains = torch.einsum("bchw,cd->bdhw", density, to_hed) * scale + shift
    shifted = torch.exp(-torch.einsum("bchw,cd->bdhw", stains, to_rgb)).clamp(0.0, 1.0)
    return torch.where(chosen[:, None, None, None], shifted, images)


def move_channels(images: torch.Tensor, draw: Photometric) -> torch.Tensor:
    """The drawn single-signal crops' signal moved to the drawn non-empty set of channels."""
    if not draw.move.any():
        return images
    chosen = to_device(draw.move, images.device) & single_signal(images)
    bits = to_device(draw.channels, images.device)
    carry = torch.stack([(bits >> c) & 1 for c in range(3)], 1).to(images.dtype)[:, :, None, None]
    moved = images.amax(1, keepdim=True) * carry
    return torch.where(chosen[:, None, None, None], moved, images)


def jitter(images: torch.Tensor, draw: Photometric) -> torch.Tensor:
    """Brightness, then contrast around each crop's grey mean; clipped to [0, 1]."""
    out = images * _column(draw.brightness, images)
    weights = to_device(np.array(GREY_WEIGHTS, np.float32), images.device)[None, :, None, None]
    grey = (out * weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    return ((out - grey) * _column(draw.contrast, images) + grey).clamp(0.0, 1.0)


def blur_kernels(sigmas: np.ndarray, radius: int, device: torch.device) -> torch.Tensor:
    """B×(2·radius+1) Gaussian kernels: each crop's sigma over its own radius ceil(3σ) (torchvision's kernel of
    that size), zero beyond it; a one-tap identity for sigma 0."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=device)
    sigma = to_device(np.asarray(sigmas, np.float32), device)
    reach = to_device(np.maximum(1, np.ceil(3 * np.asarray(sigmas))).astype(np.float32), device)
    safe = sigma.clamp(min=1e-6)[:, None]
    kernels = torch.exp(-0.5 * (offsets[None] / safe) ** 2) * (offsets[None].abs() <= reach[:, None])
    identity = (offsets == 0).to(torch.float32)[None].expand_as(kernels)
    kernels = torch.where((sigma > 0)[:, None], kernels, identity)
    return kernels / kernels.sum(1, keepdim=True)


def blur(images: torch.Tensor, sigmas: np.ndarray, max_sigma: float) -> torch.Tensor:
    """Per-crop Gaussian blur with reflect padding (separable, grouped convolution over all crops at once)."""
    if not np.any(sigmas > 0):
        return images
    radius = max(1, int(math.ceil(3 * max_sigma)))
    n, c, h, w = images.shape
    kernels = blur_kernels(sigmas, radius, images.device).repeat_interleave(c, 0)
    flat = F.pad(images.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernels[:, None, :, None], groups=n * c)
    flat = F.conv2d(flat, kernels[:, None, None, :], groups=n * c)
    return flat.reshape(n, c, h, w)


def photometric(images: torch.Tensor, draw: Photometric, cfg: AugmentConfig,
                generator: torch.Generator) -> torch.Tensor:
    """Gamma, blur, noise and re-quantisation (`training.augment.photometric`), per crop as drawn."""
    out = images.clamp(0.0, 1.0) ** _column(draw.gamma, images)
    out = blur(out, draw.blur_sigma, cfg.blur_sigma)
    if np.any(draw.noise_std > 0):
        n, _, h, w = out.shape
        field = torch.randn((n, 1, h, w), generator=generator, device=out.device, dtype=out.dtype)
        out = out + _column(draw.noise_std, out) * field
    if np.any(draw.levels > 0):
        levels = _column(np.maximum(draw.levels, 1), out)
        quantised = torch.round(out.clamp(0.0, 1.0) * levels) / levels
        out = torch.where(_column(draw.levels > 0, out) > 0, quantised, out)
    return out.clamp(0.0, 1.0)


def strong(images: torch.Tensor, rng: np.random.Generator, cfg: AugmentConfig,
           generator: torch.Generator) -> torch.Tensor:
    """The strong view of a batch: stain shift, channel move, jitter, then gamma, blur, noise, quantisation."""
    draw = draw_photometric(rng, images.shape[0], cfg)
    out = move_channels(stain_shift(images, draw), draw)
    return photometric(jitter(out, draw), draw, cfg, generator)


# --- batches ---------------------------------------------------------------------------------------------------


def labelled_batch(pool: DevicePool, items: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig,
                   generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Strong views of labelled items with their targets (the keys of `training.data.LabelledCrops`)."""
    plan = plan_crops(rng, pool, items, cfg)
    image = strong(image_views(pool, plan, cfg.crop), rng, cfg, generator)
    cls, cell, boundary = target_views(pool, plan, cfg.crop)
    return {"image": image, "cls": cls, "cell": cell, "boundary": boundary}


def unlabelled_batch(pool: DevicePool, items: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig,
                     generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Weak (geometry only) and strong views of the same crops (the keys of `training.data.UnlabelledCrops`)."""
    plan = plan_crops(rng, pool, items, cfg)
    weak = image_views(pool, plan, cfg.crop)
    return {"weak": weak, "strong": strong(weak, rng, cfg, generator)}


__all__ = [
    "CropPlan",
    "Photometric",
    "blur",
    "blur_kernels",
    "draw_photometric",
    "gather_regions",
    "image_views",
    "jitter",
    "labelled_batch",
    "move_channels",
    "orient",
    "photometric",
    "plan_crops",
    "resample",
    "resize_weights",
    "single_signal",
    "stain_shift",
    "stained",
    "strong",
    "target_views",
    "to_device",
    "unlabelled_batch",
]
