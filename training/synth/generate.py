"""One synthetic sample from (seed, split, index), and whole data sets in the challenge layout.

Every image has its own random stream seeded by (seed, split, index), so an image does not depend on how many
others are generated or on the number of worker processes: the same seed always gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable

import numpy as np

from app.config import CHALLENGE
from app.writer import write_labels
from training.synth.fields import illumination
from training.synth.formats import JPEG_QUALITY, StorageFormat, pick_format, quantise
from training.synth.modalities import render, uniform
from training.synth.noise import acquire
from training.synth.params import ModalityParams, SynthConfig
from training.synth.writer import write_image, write_meta

MAX_RETRIES = 20
LABELS_DIR, META_FILE = "labels", "meta.csv"
TIFF_ZLIB_SHARE = 0.5  # share of TIFF images written deflate-compressed
SPLITS = {"labelled": ("images", "cell"), "unlabelled": ("unlabeled", "unlabeled")}


@dataclass
class Sample:
    """One generated image as stored, with its exact labels and the unlabelled look-alikes."""

    name: str
    split: str
    modality: str
    style: str
    image: np.ndarray  # quantised, in the format's dtype and layout
    fmt: StorageFormat
    labels: np.ndarray  # int32 H×W, 0 = background, 1..N
    lookalikes: np.ndarray  # int32 H×W, cells deliberately left unlabelled
    jpeg_quality: int
    tiff_zlib: bool

    @property
    def file_name(self) -> str:
        return self.name + self.fmt.ext


def sample_name(split: str, index: int) -> str:
    """cell_00001 for labelled images, unlabeled_00001 for unlabelled ones (1-based)."""
    return f"{SPLITS[split][1]}_{index + 1:05d}"


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent random stream of one image."""
    return np.random.default_rng([int(seed), list(SPLITS).index(split), int(index)])


def choose_modality(rng: np.random.Generator, cfg: SynthConfig) -> ModalityParams:
    """Draw a modality with the configured weights (the challenge's proportions by default)."""
    w = np.array([m.weight for m in cfg.modalities], dtype=float)
    return cfg.modalities[int(rng.choice(len(w), p=w / w.sum()))]


def choose_size(rng: np.random.Generator, cfg: SynthConfig) -> tuple[int, int]:
    """Image height and width in [min_size, max_size]; square or independent sides."""
    lo, hi = cfg.min_size, cfg.max_size
    h = int(rng.integers(lo, hi + 1))
    w = h if rng.random() < cfg.square_fraction else int(rng.integers(lo, hi + 1))
    return h, w


def make_sample(seed: int, split: str, index: int, cfg: SynthConfig = SynthConfig()) -> Sample:
    """Generate image `index` of `split` for `seed`: render, pass through the microscope, quantise."""
    rng = sample_rng(seed, split, index)
    p = choose_modality(rng, cfg)
    hw = choose_size(rng, cfg)
    scene = render(rng, p, hw)
    for _ in range(MAX_RETRIES):  # a sparse draw can leave no cell; the challenge has no empty label maps
        if scene.labels.any():
            break
        scene = render(rng, p, hw)
    light = illumination(rng, hw, uniform(rng, p.vignetting), uniform(rng, p.gradient))
    recorded = acquire(
        rng, scene.clean, light, uniform(rng, p.blur), uniform(rng, p.photons), uniform(rng, p.read_noise)
    )
    fmt = pick_format(rng, p.formats, recorded)
    stored = quantise(rng, recorded, fmt, p.uint8_gain)
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    zlib = bool(rng.random() < TIFF_ZLIB_SHARE)
    name = sample_name(split, index)
    return Sample(name, split, p.name, scene.style, stored, fmt, scene.labels, scene.lookalikes, quality, zlib)


def save_sample(out: Path, sample: Sample, flat: bool = False) -> dict:
    """Write one sample's image (and labels when labelled) under `out`; return its meta.csv row.

    `flat` puts labelled images directly in `out` (a folder the app can segment as it is).
    """
    folder = "" if flat and sample.split == "labelled" else SPLITS[sample.split][0]
    image_path = out / folder / sample.file_name
    write_image(image_path, sample.image, sample.fmt, sample.jpeg_quality, sample.tiff_zlib)
    if sample.split == "labelled":
        (out / LABELS_DIR).mkdir(parents=True, exist_ok=True)
        write_labels(out / LABELS_DIR / (sample.name + CHALLENGE.output_suffix), sample.labels)
    h, w = sample.labels.shape
    return {
        "name": sample.name, "split": sample.split, "modality": sample.modality, "style": sample.style,
        "height": h, "width": w, "file": image_path.relative_to(out).as_posix(), "format": sample.fmt.label,
        "cells": int(sample.labels.max()),
    }


def meta_path(out: Path, flat: bool = False) -> Path:
    """Where meta.csv goes: `out/meta.csv`, or `out/labels/meta.csv` in the flat layout (out holds only images)."""
    return Path(out) / LABELS_DIR / META_FILE if flat else Path(out) / META_FILE


def _job(args: tuple[Path, int, str, int, SynthConfig, bool]) -> dict:
    out, seed, split, index, cfg, flat = args
    return save_sample(out, make_sample(seed, split, index, cfg), flat)


def generate_dataset(
    out: Path, labelled: int, unlabelled: int, seed: int, cfg: SynthConfig = SynthConfig(), workers: int = 1,
    progress: bool = False, flat: bool = False,
) -> list[dict]:
    """Write images/, labels/, unlabeled/ and meta.csv under `out`; return the meta rows.

    With `flat`, labelled images go directly in `out` and meta.csv into labels/ (see `save_sample`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(out, seed, "labelled", i, cfg, flat) for i in range(labelled)]
    jobs += [(out, seed, "unlabelled", i, cfg, flat) for i in range(unlabelled)]
    rows: Iterable[dict]
    if workers > 1 and len(jobs) > 1:
        with get_context("spawn").Pool(workers) as pool:
            rows = list(_progress(pool.imap(_job, jobs, chunksize=1), len(jobs), progress))
    else:
        rows = list(_progress(map(_job, jobs), len(jobs), progress))
    path = meta_path(out, flat)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_meta(path, rows)
    return rows


def _progress(it: Iterable[dict], total: int, show: bool) -> Iterable[dict]:
    if not show:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc="synth", unit="img")
