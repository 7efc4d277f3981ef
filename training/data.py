"""Challenge-layout datasets: finding pairs, checking them, splitting, caching and serving crops.

Layout: ``DIR/images/<name>.<ext>``, ``DIR/labels/<name>_label.tiff``, ``DIR/unlabeled/**`` (any depth).
A run may read several such folders (real sets beside the synthetic generator's output), each with a sampling
weight, plus folders of unlabelled images; every sample remembers which folder it came from.
Every image goes through the app's own reader and normaliser, so training sees exactly what inference sees.
Each usable file is converted once into .npy arrays in a cache folder (normalised uint8 RGB image, float16
targets (cls, cell, boundary), int32 labels, the median object diameter) keyed by the source files' name, size
and mtime and by the settings that shape them; crops are read from memory-mapped arrays, so large images cost no RAM.

Bad inputs (an image without a label, a label of another size, an empty label, an unreadable file) are
found here, before training starts, as one line ``"<file name>: <reason>"`` each; they are skipped.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from app.config import InferenceConfig
from app.diameter import label_diameter
from app.errors import InputError
from app.normalize import read_normalized
from app.reader import input_files, labelled_pairs
from app.writer import image_stem, output_name, write_atomic
from training.augment import draw_base_scale, labelled_view, unlabelled_views
from training.config import AugmentConfig, DataConfig, TargetConfig
from training.targets import make_targets

log = logging.getLogger(__name__)

CACHE_VERSION = "1"
IMAGES, LABELS, UNLABELLED = "images", "labels", "unlabeled"
DIAMETERS = "diameters"


@dataclass(frozen=True)
class Sample:
    """One source image and, for labelled data, its label map."""

    name: str
    image: Path
    label: Path | None = None
    source: int = 0  # index of the data folder it came from (for per-source sampling weights)


@dataclass(frozen=True)
class Prepared:
    """Cached arrays of one usable sample."""

    name: str
    image: Path  # uint8 H×W×3 .npy
    targets: Path | None = None  # float16 H×W×3 .npy: cls, cell, boundary
    labels: Path | None = None  # int32 H×W .npy
    source: int = 0
    diameter: float | None = None  # median labelled object diameter in px (`label_diameter`; None: unlabelled)


@dataclass
class Split:
    """Which samples train (labelled / unlabelled) and which validate, plus every problem found."""

    labelled: list[Sample] = field(default_factory=list)
    unlabelled: list[Sample] = field(default_factory=list)
    validation: list[Sample] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def scan_pairs(folder: Path) -> tuple[list[Sample], list[str]]:
    """Labelled samples of ``folder/images`` + ``folder/labels``; images without a label become problems."""
    images_dir, labels_dir = folder / IMAGES, folder / LABELS
    if not images_dir.is_dir():
        return [], [f"{folder.name}: no {IMAGES}/ folder"]
    pairs, missing = labelled_pairs(images_dir, labels_dir)
    samples = [Sample(image_stem(image), image, label) for image, label in pairs]
    return samples, [f"{image.name}: no label file {output_name(image)}" for image in missing]


def scan_unlabelled(folder: Path) -> list[Sample]:
    """Every image under ``folder/unlabeled`` at any depth."""
    root = folder / UNLABELLED
    if not root.is_dir():
        return []
    return [Sample(str(p.relative_to(root).with_suffix("")).replace(os.sep, "__"), p) for p in input_files(root, True)]


def split_dataset(data_dir: Path, cfg: DataConfig) -> Split:
    """Validation split (folder or seeded fraction) and labelled fraction (the rest become unlabelled)."""
    labelled, problems = scan_pairs(data_dir)
    split = Split(problems=problems, unlabelled=scan_unlabelled(data_dir))
    rng = np.random.default_rng(cfg.seed)
    if cfg.val_dir:
        val_folder = Path(cfg.val_dir) if Path(cfg.val_dir).is_absolute() else data_dir / cfg.val_dir
        split.validation, val_problems = scan_pairs(val_folder)
        split.problems.extend(val_problems)
    elif cfg.val_fraction > 0 and len(labelled) >= 2:
        n_val = min(max(1, round(cfg.val_fraction * len(labelled))), len(labelled) - 1)
        order = rng.permutation(len(labelled))
        split.validation = [labelled[i] for i in sorted(order[:n_val])]
        labelled = [labelled[i] for i in sorted(order[n_val:])]
    if cfg.labelled_fraction < 1.0 and labelled:
        n_keep = max(1, round(cfg.labelled_fraction * len(labelled)))
        keep = set(rng.permutation(len(labelled))[:n_keep].tolist())
        split.unlabelled = [Sample(s.name, s.image) for i, s in enumerate(labelled) if i not in keep] + split.unlabelled
        labelled = [s for i, s in enumerate(labelled) if i in keep]
    split.labelled = labelled
    return split


def tag(samples: list[Sample], source: int) -> list[Sample]:
    """The same samples marked as coming from data folder `source`."""
    return [replace(s, source=source) for s in samples]


def split_sources(folders: list[Path], cfg: DataConfig) -> Split:
    """`split_dataset` of every labelled folder, samples tagged with their folder's index, plus the images of
    `cfg.unlabelled_dirs` (tagged after the labelled folders) and, with `labelled_as_unlabelled`, the labelled
    training images again as unlabelled ones. Problems name the folder."""
    merged = Split()
    for index, folder in enumerate(folders):
        part = split_dataset(folder, cfg)
        merged.labelled += tag(part.labelled, index)
        merged.validation += tag(part.validation, index)
        merged.unlabelled += tag(part.unlabelled, index)
        merged.problems += [f"{folder.name}/{problem}" if len(folders) > 1 else problem for problem in part.problems]
    for offset, name in enumerate(cfg.unlabelled_dirs):
        folder = Path(name)
        if not folder.is_dir():
            merged.problems.append(f"{folder.name}: unlabelled folder not found")
            continue
        files = input_files(folder, True)
        merged.unlabelled += [
            Sample(str(p.relative_to(folder).with_suffix("")).replace(os.sep, "__"), p, None, len(folders) + offset)
            for p in files
        ]
    return merged


def sampling_probabilities(sources: list[int], weights: tuple[float, ...] | list[float]) -> np.ndarray | None:
    """Draw probability of each item: its source's weight shared equally by that source's items.

    None (every item equally likely) when no weights are given; sources beyond the weights weigh 1.
    """
    if not weights or not sources:
        return None
    counts: dict[int, int] = {}
    for source in sources:
        counts[source] = counts.get(source, 0) + 1
    probs = np.array([(weights[s] if s < len(weights) else 1.0) / counts[s] for s in sources], dtype=np.float64)
    if probs.sum() <= 0:
        raise ValueError("every source with images has weight 0")
    return probs / probs.sum()


def _key(paths: list[Path], settings: str) -> str:
    digest = hashlib.sha1(f"{CACHE_VERSION}|{settings}".encode())
    for path in paths:
        st = path.stat()
        digest.update(f"|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def save_array(path: Path, array: np.ndarray) -> None:
    """np.save through the app's atomic writer, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda handle: np.save(handle, array))


def load_labels(path: Path) -> np.ndarray:
    """A label map through the app's metric reader, as int32 (raises InputError with the file name)."""
    from app.metric import read_labels

    labels = read_labels(path)
    if labels.size and int(labels.max()) > np.iinfo(np.int32).max:
        raise InputError(path, "label values exceed int32")
    return labels.astype(np.int32, copy=False)


def cached_diameter(label: Path, path: Path, labels: np.ndarray | None) -> float | None:
    """`label_diameter` of a label file, read from its cache file `path` or computed (from `labels` when the
    caller has them, else from the file) and saved there; NaN on disk stands for None."""
    if not path.is_file():
        value = label_diameter(load_labels(label) if labels is None else labels)
        save_array(path, np.array(np.nan if value is None else value, dtype=np.float64))
    value = float(np.load(path))
    return None if np.isnan(value) else value


def prepare_sample(
    sample: Sample, cache: Path, data: DataConfig, targets: TargetConfig, norm: InferenceConfig, want_labels: bool
) -> Prepared:
    """Cached arrays of one sample, computing what is missing; raises InputError for a bad file."""
    settings = f"{data.max_pixels}|{norm.norm_low_percentile}|{norm.norm_high_percentile}|{targets}"
    sources = [sample.image] + ([sample.label] if sample.label else [])
    key = _key(sources, settings)
    image_npy = cache / IMAGES / f"{sample.name}-{key}.npy"
    targets_npy = cache / "targets" / f"{sample.name}-{key}.npy" if sample.label else None
    labels_npy = cache / LABELS / f"{sample.name}-{key}.npy" if sample.label and want_labels else None
    wanted = [p for p in (image_npy, targets_npy, labels_npy) if p is not None]
    labels = None
    if not all(p.is_file() for p in wanted):
        rgb = read_normalized(sample.image, data.max_pixels, norm)
        if sample.label is not None:
            labels = load_labels(sample.label)
            if labels.shape != rgb.shape[:2]:
                raise InputError(
                    sample.label,
                    f"label is {labels.shape[0]}×{labels.shape[1]} but its image is {rgb.shape[0]}×{rgb.shape[1]}",
                )
            if not labels.any():
                raise InputError(sample.label, "label map has no cells")
            cls, cell, boundary = make_targets(labels, targets)
            stacked = [cls.astype(np.float16), cell.astype(np.float16), boundary.astype(np.float16)]
            assert targets_npy is not None  # set whenever the sample has a label
            save_array(targets_npy, np.stack(stacked, -1))
            if labels_npy is not None:
                save_array(labels_npy, labels)
        save_array(image_npy, rgb)
    diameter = None
    if sample.label is not None:
        diameter = cached_diameter(sample.label, cache / DIAMETERS / f"{sample.name}-{key}.npy", labels)
    return Prepared(sample.name, image_npy, targets_npy, labels_npy, sample.source, diameter)


def prepare_all(
    samples: list[Sample],
    cache: Path,
    data: DataConfig,
    targets: TargetConfig,
    norm: InferenceConfig,
    want_labels: bool = False,
) -> tuple[list[Prepared], list[str]]:
    """Prepare every sample; a bad one is logged (one warning naming the file), skipped and listed."""
    prepared: list[Prepared] = []
    problems: list[str] = []
    for sample in samples:
        try:
            prepared.append(prepare_sample(sample, cache, data, targets, norm, want_labels))
        except InputError as error:
            problems.append(str(error))
            log.warning("%s", error)
    return prepared, problems


def open_array(path: Path) -> np.ndarray:
    """A cached array, memory-mapped read-only."""
    return np.load(path, mmap_mode="r")


def item_rng(seed: int, stream: int, epoch: int, position: int) -> np.random.Generator:
    """Augmentation randomness of one draw, fixed by where it sits in the run (resumable, worker-independent)."""
    return np.random.default_rng([seed, stream, epoch, position])


Key = tuple[int, int, int]  # sample index, epoch, position in the epoch


class _Crops(Dataset):
    """Random views of prepared samples, indexed by `Key` so each draw is fixed by its place in the run."""

    def __init__(self, samples: list[Prepared], cfg: AugmentConfig, seed: int) -> None:
        self.samples, self.cfg, self.seed = samples, cfg, seed

    def __len__(self) -> int:
        return len(self.samples)


class LabelledCrops(_Crops):
    """Labelled crops: image, cls, cell, boundary of one random view of one sample."""

    def __getitem__(self, key: Key) -> dict[str, torch.Tensor]:
        index, epoch, position = key
        sample = self.samples[index]
        assert sample.targets is not None  # labelled samples are prepared with targets
        rng = item_rng(self.seed, 0, epoch, position)
        image, cls, cell, boundary = labelled_view(
            open_array(sample.image), open_array(sample.targets), rng, self.cfg,
            draw_base_scale(rng, sample.diameter, self.cfg),
        )
        return {"image": image, "cls": cls, "cell": cell, "boundary": boundary}


class UnlabelledCrops(_Crops):
    """Unlabelled crops: the weak and strong views of the same pixels."""

    def __getitem__(self, key: Key) -> dict[str, torch.Tensor]:
        index, epoch, position = key
        rng = item_rng(self.seed, 1, epoch, position)
        sample = self.samples[index]
        base = draw_base_scale(rng, sample.diameter, self.cfg)
        weak, strong = unlabelled_views(open_array(sample.image), rng, self.cfg, base)
        return {"weak": weak, "strong": strong}


def epoch_order(
    n_items: int, count: int, seed: int, stream: int, epoch: int, probs: np.ndarray | None = None
) -> np.ndarray:
    """`count` sample indices for one epoch: shuffled passes over all items, repeated as needed, or, with
    `probs`, independent draws with those probabilities (per-source weights)."""
    rng = np.random.default_rng([seed, stream, epoch, 7])
    if probs is not None:
        return rng.choice(n_items, size=count, p=probs)
    passes = math.ceil(count / n_items)
    return np.concatenate([rng.permutation(n_items) for _ in range(passes)])[:count]


class EpochSampler(Sampler):
    """This rank's share of one epoch's draws from step `first_step` on, as (index, epoch, position) keys.

    All ranks compute the same global order from the seed and each takes every world-th draw, like
    DistributedSampler, but the order is a pure function of (seed, epoch), so a resumed run repeats it.
    """

    def __init__(
        self,
        n_items: int,
        batch: int,
        steps: int,
        epoch: int,
        seed: int,
        stream: int,
        rank: int = 0,
        world: int = 1,
        probs: np.ndarray | None = None,
        first_step: int = 0,
    ) -> None:
        self.n_items, self.batch, self.steps = n_items, batch, steps
        self.epoch, self.seed, self.stream, self.rank, self.world = epoch, seed, stream, rank, world
        self.probs, self.first_step = probs, first_step

    def __len__(self) -> int:
        return (self.steps - self.first_step) * self.batch

    def __iter__(self) -> Iterator[Key]:
        total = self.steps * self.batch * self.world
        order = epoch_order(self.n_items, total, self.seed, self.stream, self.epoch, self.probs)
        start = self.first_step * self.batch * self.world  # a run resumed inside the epoch skips the steps done
        for position in range(start + self.rank, total, self.world):
            yield int(order[position]), self.epoch, position


def steps_per_epoch(n_labelled: int, repeats: int, batch: int, world: int) -> int:
    """Optimiser steps in one epoch: each labelled image drawn `repeats` times (at least one step)."""
    return max(1, math.ceil(n_labelled * repeats / (batch * world)))


__all__ = [
    "EpochSampler",
    "LabelledCrops",
    "Prepared",
    "Sample",
    "Split",
    "UnlabelledCrops",
    "epoch_order",
    "load_labels",
    "open_array",
    "prepare_all",
    "prepare_sample",
    "sampling_probabilities",
    "save_array",
    "scan_pairs",
    "scan_unlabelled",
    "split_dataset",
    "split_sources",
    "tag",
    "steps_per_epoch",
]
