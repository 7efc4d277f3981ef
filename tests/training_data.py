"""Tiny training data and configs drawn in the tests: shared by the trainer, data, CLI and benchmark tests."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

from training.config import TrainConfig, load_config

# `python -m training train` options that shrink the cpu preset to seconds (the CLI's form of `tiny_config`).
TINY = [
    "--set", "model.decoder_channels=[8, 8, 8, 8, 8]",
    "--set", "augment.crop=64",
    "--set", "schedule.batch_size=2",
    "--set", "schedule.unlabelled_batch_size=2",
    "--set", "data.repeats=1",
    "--set", "data.val_fraction=0.25",
    "--set", "teacher.warmup_epochs=1",
    "--set", "validation.every_epochs=1",
    "--set", "validation.window=64",
    "--set", "runtime.threads=1",
    "--set", "runtime.progress=false",
]


def draw_cells(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A label map of non-overlapping discs and a noisy RGB image of them."""
    labels = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    value = 1
    for _ in range(size * size // 250):
        cy, cx = rng.integers(6, size - 6, 2)
        radius = int(rng.integers(4, 8))
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius
        if not labels[disc].any():
            labels[disc] = value
            value += 1
    image = np.where(labels[..., None] > 0, np.array([190, 90, 160]), np.array([25, 25, 25])).astype(np.float32)
    image += rng.normal(0, 10, image.shape)
    return labels, np.clip(image, 0, 255).astype(np.uint8)


def write_dataset(root: Path, labelled: int = 4, unlabelled: int = 2, size: int = 72, seed: int = 0) -> Path:
    """Challenge layout: images/cell_XXX.png, labels/cell_XXX_label.tiff, unlabeled/u_XXX.png."""
    rng = np.random.default_rng(seed)
    for folder in ("images", "labels", "unlabeled"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(labelled):
        labels, image = draw_cells(rng, size)
        iio.imwrite(root / "images" / f"cell_{i:03d}.png", image)
        tifffile.imwrite(root / "labels" / f"cell_{i:03d}_label.tiff", labels.astype(np.uint16), compression="zlib")
    for i in range(unlabelled):
        iio.imwrite(root / "unlabeled" / f"u_{i:03d}.png", draw_cells(rng, size)[1])
    return root


def tiny_config(**overrides) -> TrainConfig:
    """The cpu preset shrunk to seconds: 8-channel decoder, 64-pixel crops, batches of 2."""
    base = {
        "model": {"encoder": "mobilenet_v2", "decoder_channels": [8, 8, 8, 8, 8]},
        "augment.crop": 64,
        "data.val_fraction": 0.25,
        "data.repeats": 1,
        "schedule.epochs": 2,
        "schedule.batch_size": 2,
        "schedule.unlabelled_batch_size": 2,
        "teacher.warmup_epochs": 1,
        "validation.every_epochs": 0,
        "validation.window": 64,
        "runtime.threads": 1,
        "runtime.progress": False,
        "runtime.tensorboard": False,
    }
    base.update(overrides)
    return load_config("cpu", base)
