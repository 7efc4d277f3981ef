"""Random views for training (paper section 3.2.2): scale, crop, flips, 90° rotations, jitter, CutMix.

A view is cut from a source region of side crop/scale (zero-padded where the image is smaller), resized to
crop × crop, flipped and rotated; labelled crops then get brightness/contrast jitter (never hue or
saturation: stain colour is a cue), then, where the config switches them on, the variation real acquisitions
have: the signal of a single-signal image moved to any channels, gamma, blur, noise and re-quantisation. An
unlabelled image gives two views of the same pixels: weak (geometry only) for the teacher and strong (weak +
the same photometric changes) for the student. CutMix works on a batch: a box from another
crop of the batch is pasted into the images and, with the same boxes, into the targets or teacher maps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from skimage.color import hed_from_rgb, rgb_from_hed

from training.config import DIAMETER_SCALE_RANGE, AugmentConfig


@dataclass(frozen=True)
class Geometry:
    """Where a view comes from: a source square (may overhang the image) and the flips/rotation applied."""

    y0: int
    x0: int
    size: int  # side of the source square in image pixels
    flip_y: bool
    flip_x: bool
    rot90: int  # quarter turns, 0..3


def base_scale(diameter: float | None, cfg: AugmentConfig) -> float:
    """The scale that brings objects of median diameter `diameter` (px) to `cfg.diameter`, clipped to
    DIAMETER_SCALE_RANGE; 1 (native size) when either is unknown or zero."""
    if not cfg.diameter or not diameter:
        return 1.0
    low, high = DIAMETER_SCALE_RANGE
    return float(np.clip(cfg.diameter / diameter, low, high))


def draw_base_scale(rng: np.random.Generator, diameter: float | None, cfg: AugmentConfig) -> float:
    """`base_scale` for a share `cfg.diameter_p` of the draws, else 1 (native size); no random number is used
    when the base scale is off or unknown, so such runs draw exactly as before."""
    base = base_scale(diameter, cfg)
    if base == 1.0 or cfg.diameter_p >= 1.0:
        return base
    return base if rng.random() < cfg.diameter_p else 1.0


def sample_geometry(
    rng: np.random.Generator, shape: tuple[int, int], cfg: AugmentConfig, base: float = 1.0
) -> Geometry:
    """Random scale `base` x [scale_min, scale_max] (log-uniform), a random square of side crop/scale, random
    flips/rotation."""
    scale = base * float(np.exp(rng.uniform(np.log(cfg.scale_min), np.log(cfg.scale_max))))
    size = max(1, int(round(cfg.crop / scale)))
    starts = []
    for length in shape:
        if length >= size:
            starts.append(int(rng.integers(0, length - size + 1)))
        else:  # pad: the image sits at a random place inside the square
            starts.append(-int(rng.integers(0, size - length + 1)))
    return Geometry(
        y0=starts[0],
        x0=starts[1],
        size=size,
        flip_y=bool(cfg.flips and rng.random() < 0.5),
        flip_x=bool(cfg.flips and rng.random() < 0.5),
        rot90=int(rng.integers(0, 4)) if cfg.rot90 else 0,
    )


def extract_region(array: np.ndarray, y0: int, x0: int, size: int) -> np.ndarray:
    """size × size (× C) window at (y0, x0) of an H×W(×C) array; parts outside the array are zero."""
    out = np.zeros((size, size) + array.shape[2:], dtype=array.dtype)
    h, w = array.shape[:2]
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + size, h), min(x0 + size, w)
    if ye > ys and xe > xs:
        out[ys - y0 : ye - y0, xs - x0 : xe - x0] = array[ys:ye, xs:xe]
    return out


def resize(tensor: torch.Tensor, size: int, nearest: bool = False) -> torch.Tensor:
    """C×h×w float tensor to C×size×size: nearest for classes, bilinear (antialiased when shrinking) else."""
    if tensor.shape[-1] == size and tensor.shape[-2] == size:
        return tensor
    batch = tensor.unsqueeze(0)
    if nearest:
        return F.interpolate(batch, size=(size, size), mode="nearest")[0]
    shrink = tensor.shape[-1] > size
    return F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)[0]


def orient(tensor: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """Apply the view's flips and quarter turns to the last two axes."""
    if geom.flip_y:
        tensor = tensor.flip(-2)
    if geom.flip_x:
        tensor = tensor.flip(-1)
    if geom.rot90:
        tensor = torch.rot90(tensor, geom.rot90, dims=(-2, -1))
    return tensor


def view(array: np.ndarray, geom: Geometry, crop: int, nearest: bool = False) -> torch.Tensor:
    """The crop × crop view of an H×W×C array as a C×crop×crop float32 tensor (values unchanged)."""
    region = extract_region(array, geom.y0, geom.x0, geom.size)
    tensor = torch.from_numpy(np.ascontiguousarray(region, dtype=np.float32)).permute(2, 0, 1)
    return orient(resize(tensor, crop, nearest), geom).contiguous()


def jitter(image: torch.Tensor, rng: np.random.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Brightness then contrast (around the grey mean) factors from [1 - x, 1 + x]; clipped to [0, 1]."""
    brightness = float(rng.uniform(1 - cfg.brightness, 1 + cfg.brightness))
    contrast = float(rng.uniform(1 - cfg.contrast, 1 + cfg.contrast))
    out = image * brightness
    grey = (0.299 * out[0] + 0.587 * out[1] + 0.114 * out[2]).mean()
    out = (out - grey) * contrast + grey
    return out.clamp(0.0, 1.0)


def photometric(image: torch.Tensor, rng: np.random.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """Gamma, blur, noise and re-quantisation of a 3×H×W image in [0, 1], each per `cfg` (pixels stay put)."""
    out = image
    if cfg.gamma > 0:
        out = out.clamp(0.0, 1.0) ** float(np.exp(rng.uniform(-np.log1p(cfg.gamma), np.log1p(cfg.gamma))))
    if cfg.blur_p > 0 and rng.random() < cfg.blur_p:
        sigma = float(rng.uniform(0.0, cfg.blur_sigma))
        if sigma > 0.1:
            radius = max(1, int(math.ceil(3 * sigma)))
            out = TF.gaussian_blur(out, [2 * radius + 1] * 2, [sigma, sigma])
    if cfg.noise_p > 0 and rng.random() < cfg.noise_p:
        std = float(rng.uniform(0.0, cfg.noise_std))
        noise = torch.from_numpy(rng.standard_normal(out.shape[-2:], dtype=np.float32))
        out = out + std * noise  # one field for all channels: a grey image stays grey
    if cfg.quantize_p > 0 and rng.random() < cfg.quantize_p:
        levels = int(rng.integers(cfg.quantize_levels, 257)) - 1
        out = torch.round(out.clamp(0.0, 1.0) * levels) / levels
    return out.clamp(0.0, 1.0)


def single_signal(image: torch.Tensor, tolerance: float = 2.0 / 255.0) -> bool:
    """True for a grey image (channels equal) or one whose signal sits in one channel (the others empty)."""
    filled = [c for c in range(image.shape[0]) if bool(image[c].any())]
    if len(filled) <= 1:
        return True
    ref = image[filled[0]]
    return all(float((image[c] - ref).abs().max()) <= tolerance for c in filled[1:])


def move_channels(image: torch.Tensor, rng: np.random.Generator, p: float) -> torch.Tensor:
    """With probability p, a single-signal image's signal goes to a random non-empty set of channels."""
    if p <= 0 or rng.random() >= p or not single_signal(image):
        return image
    signal = image.max(0).values
    mask = int(rng.integers(1, 8))  # 1..7: which of the three channels carry the signal
    out = torch.zeros_like(image)
    for c in range(3):
        if mask >> c & 1:
            out[c] = signal
    return out


def stained(image: torch.Tensor) -> bool:
    """True for a colour image: all three channels carry signal and they differ (a stain, not grey or
    fluorescence in one or two channels)."""
    return all(bool(image[c].any()) for c in range(3)) and not single_signal(image)


def stain_shift(image: torch.Tensor, rng: np.random.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """With probability `cfg.stain_p`, a colour image's haematoxylin, eosin and DAB optical densities each scaled
    and shifted by small random amounts (Tellez et al. 2019), so stains of other labs look familiar.

    Optical density is -ln(RGB) with RGB floored at 1/255, split into stains by scikit-image's HED matrices,
    without the clipping of `rgb2hed` (which would change pixels even with no perturbation)."""
    if cfg.stain_p <= 0 or rng.random() >= cfg.stain_p or not stained(image):
        return image
    scale = rng.uniform(1 - cfg.stain_scale, 1 + cfg.stain_scale, 3)
    shift = rng.uniform(-cfg.stain_shift, cfg.stain_shift, 3)
    density = -np.log(np.clip(image.permute(1, 2, 0).numpy(), 1.0 / 255.0, 1.0))
    stains = (density @ hed_from_rgb) * scale + shift
    rgb = np.clip(np.exp(-(stains @ rgb_from_hed)), 0.0, 1.0).astype(np.float32)
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def strong(image: torch.Tensor, rng: np.random.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """The strong photometric view: stain shift, channel move, brightness/contrast, then gamma, blur, noise,
    quantisation."""
    image = move_channels(stain_shift(image, rng, cfg), rng, cfg.channel_p)
    return photometric(jitter(image, rng, cfg), rng, cfg)


def labelled_view(
    image: np.ndarray, targets: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig, base: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 H×W×3 image and H×W×3 targets (cls, cell, boundary) -> image 3×C×C in [0, 1], cls C×C int64,
    cell 1×C×C and boundary 1×C×C float32, all of the same pixels (`base`: the image's base scale)."""
    geom = sample_geometry(rng, image.shape[:2], cfg, base)
    img = view(image, geom, cfg.crop) / 255.0
    cls = view(targets[..., :1], geom, cfg.crop, nearest=True)[0].round().long()
    maps = view(targets[..., 1:], geom, cfg.crop).clamp(0.0, 1.0)
    return strong(img, rng, cfg), cls, maps[:1], maps[1:]


def unlabelled_views(
    image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig, base: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 H×W×3 -> (weak, strong) 3×C×C views of the same pixels; strong = weak + jitter."""
    geom = sample_geometry(rng, image.shape[:2], cfg, base)
    weak = view(image, geom, cfg.crop) / 255.0
    return weak, strong(weak, rng, cfg)


Box = tuple[int, int, int, int, int]  # source index, y0, y1, x0, x1


def cutmix_boxes(rng: np.random.Generator, n: int, size: int, p: float) -> list[Box | None]:
    """For each of n crops, with probability p, a box (area fraction uniform in [0, 1]) and the crop to take
    it from (another crop of the batch; a batch of one mixes with nothing)."""
    boxes: list[Box | None] = []
    for i in range(n):
        if n < 2 or rng.random() >= p:
            boxes.append(None)
            continue
        source = int((i + rng.integers(1, n)) % n)
        side = int(round(size * np.sqrt(rng.uniform(0.0, 1.0))))
        cy, cx = rng.integers(0, size, 2)
        y0, y1 = max(int(cy) - side // 2, 0), min(int(cy) + side - side // 2, size)
        x0, x1 = max(int(cx) - side // 2, 0), min(int(cx) + side - side // 2, size)
        boxes.append((source, y0, y1, x0, x1) if y1 > y0 and x1 > x0 else None)
    return boxes


def apply_cutmix(batch: torch.Tensor, boxes: list[Box | None]) -> torch.Tensor:
    """Paste each crop's box from its source crop (last two axes spatial); the input is left unchanged."""
    out = batch.clone()
    for i, box in enumerate(boxes):
        if box is not None:
            source, y0, y1, x0, x1 = box
            out[i, ..., y0:y1, x0:x1] = batch[source, ..., y0:y1, x0:x1]
    return out


__all__ = [
    "Geometry",
    "apply_cutmix",
    "base_scale",
    "cutmix_boxes",
    "draw_base_scale",
    "extract_region",
    "jitter",
    "labelled_view",
    "move_channels",
    "photometric",
    "single_signal",
    "stain_shift",
    "stained",
    "strong",
    "orient",
    "resize",
    "sample_geometry",
    "unlabelled_views",
    "view",
]
