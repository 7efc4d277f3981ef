"""The microscope after the specimen: optical blur, uneven illumination, shot noise and read noise.

`acquire` takes a clean linear image in [0, 1] (H×W or H×W×C) and returns what a camera records, still as
floats in [0, 1]. Channels that are exactly zero (the empty red channel of fluorescence) stay exactly zero.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian point-spread function applied to each channel."""
    if sigma <= 0:
        return image
    sig = (sigma, sigma, 0.0) if image.ndim == 3 else sigma
    return ndi.gaussian_filter(image, sig, mode="reflect", truncate=3.0)


def shot_and_read_noise(
    rng: np.random.Generator, image: np.ndarray, photons: float, read_noise: float
) -> np.ndarray:
    """Poisson noise with `photons` counts at full scale, plus Gaussian noise of std `read_noise`."""
    counts = rng.poisson(np.clip(image, 0.0, None) * photons).astype(np.float32)
    noisy = counts / photons + rng.normal(0.0, read_noise, image.shape).astype(np.float32)
    return noisy


def acquire(
    rng: np.random.Generator,
    clean: np.ndarray,
    light: np.ndarray,
    sigma: float,
    photons: float,
    read_noise: float,
) -> np.ndarray:
    """Blur, multiply by the illumination field `light` (H×W), add noise, clip to [0, 1] (float32)."""
    img = blur(clean.astype(np.float32), sigma)
    img = img * (light[:, :, None] if img.ndim == 3 else light)
    img = shot_and_read_noise(rng, img, photons, read_noise)
    if img.ndim == 3:
        empty = ~(clean.reshape(-1, clean.shape[2]) != 0).any(axis=0)
        img[:, :, empty] = 0.0
    return np.clip(img, 0.0, 1.0).astype(np.float32)
