"""Classical baseline: what a user without a network would do (Otsu threshold + distance-transform watershed).

Per image, on the app's own normalised RGB (`app.normalize`), so it sees exactly what the model sees:

1. a foreground score whose polarity suits the modality: brightness for fluorescence (empty red channel),
   departure from the background colour for colour images (stained cells on a light slide), and local
   contrast against a smoothed background for grey images (phase halos and DIC relief both count);
2. Otsu threshold of that score, holes filled, small objects removed;
3. seeds at the peaks of the distance transform, then a watershed of the negated distance to split
   touching cells.

Usage: ``python -m benchmarks.baseline INPUT_DIR OUTPUT_DIR`` writes ``<name>_label.tiff`` per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed

from app.config import InferenceConfig
from app.metric import relabel
from app.normalize import is_fluorescence, normalize, to_rgb

MAX_SPACING = 50  # px: largest seed spacing


@dataclass(frozen=True)
class BaselineConfig:
    """Settings of the classical baseline."""

    smooth_sigma: float = 1.0  # px: Gaussian smoothing of the score before thresholding
    background_sigma: float = 25.0  # px: scale of the background estimate for grey images
    polarity_skew: float = 0.5  # |skewness| of the local contrast above which grey cells have one polarity
    colour_spread: float = 12.0  # mean channel spread (0..255) above which an image counts as colour
    min_area: int = 30  # px: objects smaller than this are removed
    min_distance: int = 3  # px: smallest distance between watershed seeds
    radius_spacing: float = 1.0  # seed spacing as a fraction of the typical inscribed radius of the objects
    radius_percentile: float = 75.0  # which percentile of the objects' inscribed radii is typical
    peak_fraction: float = 0.35  # seeds need a distance of at least this share of their object's maximum


def foreground_score(rgb_u8: np.ndarray, fluorescence: bool, cfg: BaselineConfig = BaselineConfig()) -> np.ndarray:
    """Float32 H×W map that is high on cells, with a polarity chosen per modality."""
    rgb = rgb_u8.astype(np.float32)
    if fluorescence:
        score = rgb[..., 1:].max(axis=2)
    elif float(np.mean(rgb.max(axis=2) - rgb.min(axis=2))) > cfg.colour_spread:
        background = np.median(rgb.reshape(-1, 3), axis=0)
        score = np.clip(background[None, None, :] - rgb, 0.0, None).max(axis=2)
    else:
        gray = rgb.mean(axis=2)
        contrast = gray - ndi.gaussian_filter(gray, cfg.background_sigma)
        skew = float(np.mean(contrast**3) / max(float(np.mean(contrast**2)) ** 1.5, 1e-6))
        if abs(skew) > cfg.polarity_skew:  # cells clearly darker (phase) or brighter than their surroundings
            score = np.sign(skew) * contrast
        else:  # relief (DIC): both bright and dark sides are cell
            score = ndi.gaussian_filter(np.abs(contrast), 2.0 * cfg.smooth_sigma)
    return ndi.gaussian_filter(score, cfg.smooth_sigma).astype(np.float32)


def foreground_mask(score: np.ndarray, cfg: BaselineConfig = BaselineConfig()) -> np.ndarray:
    """Otsu threshold of the score, holes filled, objects under `min_area` removed."""
    if float(score.max()) <= float(score.min()):
        return np.zeros(score.shape, dtype=bool)
    mask = ndi.binary_fill_holes(score > threshold_otsu(score))
    return remove_small_objects(mask, max_size=cfg.min_area - 1) if cfg.min_area > 1 else mask


def split_touching(mask: np.ndarray, cfg: BaselineConfig = BaselineConfig()) -> np.ndarray:
    """Watershed of the negated distance transform from its peaks: int32 labels 1..N."""
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int32)
    dist = ndi.distance_transform_edt(mask)
    components, n = ndi.label(mask)
    peak_of = ndi.maximum(dist, components, index=np.arange(1, n + 1))
    floor = np.concatenate([[np.inf], cfg.peak_fraction * np.asarray(peak_of)])[components]
    # Seeds closer than most cells are wide would cut cells apart: scale the seed spacing with the median
    # inscribed radius of the objects (isolated cells dominate the median).
    typical = float(np.percentile(peak_of, cfg.radius_percentile))
    spacing = int(np.clip(round(cfg.radius_spacing * typical), cfg.min_distance, MAX_SPACING))
    peaks = peak_local_max(dist, min_distance=spacing, labels=components, exclude_border=False)
    keep = dist[peaks[:, 0], peaks[:, 1]] >= floor[peaks[:, 0], peaks[:, 1]]
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[peaks[keep, 0], peaks[keep, 1]] = np.arange(1, int(keep.sum()) + 1)
    # Every component gets at least one seed, so no object is lost to an empty marker set.
    unseeded = np.setdiff1d(np.arange(1, n + 1), np.unique(components[markers > 0]))
    for c in unseeded:
        ys, xs = np.nonzero(components == c)
        best = int(np.argmax(dist[ys, xs]))
        markers[ys[best], xs[best]] = markers.max() + 1
    return relabel(watershed(-dist, markers, mask=mask))


def segment_rgb(rgb_u8: np.ndarray, cfg: BaselineConfig = BaselineConfig(),
                app_cfg: InferenceConfig = InferenceConfig()) -> np.ndarray:
    """Instance labels (int32) of a normalised uint8 RGB image."""
    score = foreground_score(rgb_u8, is_fluorescence(rgb_u8, app_cfg), cfg)
    return split_touching(foreground_mask(score, cfg), cfg)


def segment_image(image: np.ndarray, cfg: BaselineConfig = BaselineConfig(),
                  app_cfg: InferenceConfig = InferenceConfig()) -> np.ndarray:
    """Instance labels of an image as read by `app.reader.read_image` (any dtype, 1..4 channels)."""
    return segment_rgb(normalize(to_rgb(image), app_cfg), cfg, app_cfg)


def segment_folder(input_dir: Path, output_dir: Path, cfg: BaselineConfig = BaselineConfig(),
                   app_cfg: InferenceConfig = InferenceConfig()) -> list[Path]:
    """Segment every image of a folder and write the challenge's `<name>_label.tiff` files."""
    from app.normalize import read_normalized
    from app.reader import list_inputs
    from app.writer import output_name, write_labels

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in list_inputs(input_dir)[0]:
        labels = segment_rgb(read_normalized(path, app_cfg.max_pixels, app_cfg), cfg, app_cfg)
        written.append(write_labels(output_dir / output_name(path), labels))
    return written


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: python -m benchmarks.baseline INPUT_DIR OUTPUT_DIR")
    done = segment_folder(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {len(done)} label files to {sys.argv[2]}")
