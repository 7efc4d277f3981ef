"""The kit's data read back where it runs: images, targets made from the labels, arrays on the device.

Packed folders are decoded in threads, synthetic folders regenerated in processes (`synthetic`), and the
targets of every labelled image made in processes by `training.targets.make_targets` from its labels, stored
as float16 (cls, cell, boundary) exactly as `training.data.prepare_sample` caches them. The pool then lives on
the device as two flat buffers (every image's pixels one after another, uint8 RGB; every labelled image's
targets, float16), with each item's offset and size kept on the host, so that a batch of crops is one gather.
Which items train: every labelled image; the unlabelled stream takes the unlabelled images and, with
`data.labelled_as_unlabelled`, the labelled ones again, as `training.trainer.prepare_data` does. Items carry
the index of their folder for the per-source sampling weights.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.config import TargetConfig, TrainConfig
from training.gpu_kit.env import worker_setup
from training.gpu_kit.layout import read_manifest
from training.gpu_kit.store import Entry, read_archive, read_index
from training.gpu_kit.synthetic import SynthRecipe, regenerate_all

log = logging.getLogger(__name__)


@dataclass
class HostPool:
    """Every item of the kit in host memory, in source order."""

    names: list[str]
    sources: list[int]
    images: list[np.ndarray]  # uint8 H×W×3
    targets: list[np.ndarray | None]  # float16 H×W×3 (cls, cell, boundary); None for unlabelled images
    diameters: list[float | None]
    source_names: list[str]

    @property
    def labelled(self) -> list[int]:
        return [i for i, t in enumerate(self.targets) if t is not None]

    def unlabelled(self, labelled_as_unlabelled: bool) -> list[int]:
        """Items of the unlabelled stream: unlabelled images, then (optionally) the labelled ones again."""
        extra = self.labelled if labelled_as_unlabelled else []
        return [i for i, t in enumerate(self.targets) if t is None] + extra


def read_packed(archive: Path, workers: int) -> list[Entry]:
    """Every entry of one archive, decoded in `workers` threads (each with its own handle on the file)."""
    count = len(read_index(archive))
    chunks = [list(range(k, count, max(workers, 1))) for k in range(max(workers, 1))]
    with ThreadPoolExecutor(max(workers, 1)) as pool:
        parts = list(pool.map(lambda select: list(read_archive(archive, select)), chunks))
    by_position: dict[int, Entry] = {}
    for select, entries in zip(chunks, parts):
        by_position.update(zip(select, entries))
    return [by_position[k] for k in range(count)]


def verify_archive(archive: Path, record: dict[str, Any]) -> None:
    """A source archive as the manifest recorded it: present, of its size and sha256 (a transfer can cut it)."""
    from training.gpu_kit.transport import sha256

    if not archive.is_file():
        raise FileNotFoundError(f"{archive.name}: missing from the kit")
    if archive.stat().st_size != record["bytes"] or sha256(archive) != record["sha256"]:
        raise ValueError(f"{archive.name}: differs from the kit's manifest (damaged or cut in transfer)")


def read_sources(kit: Path, workers: int) -> list[tuple[int, str, list[Entry]]]:
    """(index, folder name, entries) of every source of the kit, in the manifest's order."""
    manifest = read_manifest(kit)
    out = []
    for record in manifest["sources"]:
        if record["kind"] == "synthetic":
            entries = regenerate_all(SynthRecipe.from_dict(record["recipe"]), workers)
        else:
            archive = Path(kit) / record["archive"]
            verify_archive(archive, record)
            entries = read_packed(archive, workers)
        out.append((int(record["index"]), str(record["name"]), entries))
    return out


def targets_of(args: tuple[np.ndarray, TargetConfig, bool]) -> tuple[np.ndarray, float | None]:
    """float16 H×W×3 targets of one label map (as `prepare_sample` caches them) and, when asked, its median
    object diameter (`app.diameter.label_diameter`)."""
    from app.diameter import label_diameter
    from training.targets import make_targets

    labels, cfg, want_diameter = args
    labels = labels.astype(np.int32, copy=False)
    cls, cell, boundary = make_targets(labels, cfg)
    stacked = np.stack([cls.astype(np.float16), cell.astype(np.float16), boundary.astype(np.float16)], -1)
    return stacked, label_diameter(labels) if want_diameter else None


def build_pool(kit: Path, cfg: TrainConfig, workers: int = 1) -> HostPool:
    """The kit's data in host memory with targets made by `cfg.targets` (diameters only when
    `augment.diameter` needs them)."""
    started = time.perf_counter()
    sources = read_sources(kit, workers)
    entries = [(index, entry) for index, _, items in sources for entry in items]
    log.info(f"kit data read in {time.perf_counter() - started:.1f} s: {len(entries)} images")
    started = time.perf_counter()
    jobs = [(e.labels, cfg.targets, cfg.augment.diameter > 0) for _, e in entries if e.labels is not None]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=worker_setup) as pool:
            made = list(pool.map(targets_of, jobs, chunksize=4))
    else:
        made = [targets_of(job) for job in jobs]
    log.info(f"targets of {len(made)} labelled images made in {time.perf_counter() - started:.1f} s")
    results = iter(made)
    targets: list[np.ndarray | None] = []
    diameters: list[float | None] = []
    for _, entry in entries:
        target, diameter = next(results) if entry.labels is not None else (None, None)
        targets.append(target)
        diameters.append(diameter)
    return HostPool(
        names=[e.name for _, e in entries], sources=[i for i, _ in entries], images=[e.image for _, e in entries],
        targets=targets, diameters=diameters, source_names=[name for _, name, _ in sources],
    )


@dataclass
class DevicePool:
    """The pool as flat device buffers plus each item's place and size on the host."""

    pixels: torch.Tensor  # uint8 P×3
    targets: torch.Tensor  # float16 Q×3
    pixel_offset: np.ndarray  # int64 per item
    target_offset: np.ndarray  # int64 per item, -1 for unlabelled images
    heights: np.ndarray
    widths: np.ndarray
    sources: np.ndarray
    diameters: list[float | None]

    @classmethod
    def upload(cls, host: HostPool, device: torch.device) -> "DevicePool":
        """Copy the host pool to `device` as two flat buffers."""
        heights = np.array([im.shape[0] for im in host.images], np.int64)
        widths = np.array([im.shape[1] for im in host.images], np.int64)
        sizes = heights * widths
        pixel_offset = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        labelled = np.array([t is not None for t in host.targets])
        target_sizes = np.where(labelled, sizes, 0)
        target_offset = np.where(labelled, np.concatenate([[0], np.cumsum(target_sizes)[:-1]]), -1).astype(np.int64)
        pixels = torch.from_numpy(np.concatenate([im.reshape(-1, 3) for im in host.images]))
        maps = [t.reshape(-1, 3) for t in host.targets if t is not None]
        targets = torch.from_numpy(np.concatenate(maps) if maps else np.zeros((0, 3), np.float16))
        return cls(pixels.to(device), targets.to(device), pixel_offset, target_offset, heights, widths,
                   np.array(host.sources, np.int64), list(host.diameters))

    def shape(self, item: int) -> tuple[int, int]:
        return int(self.heights[item]), int(self.widths[item])

    def nbytes(self) -> int:
        return sum(int(t.numel() * t.element_size()) for t in (self.pixels, self.targets))


def describe(host: HostPool, labelled_as_unlabelled: bool) -> list[dict[str, Any]]:
    """Per source: labelled and unlabelled-stream counts (for the log and the checkpoint's data record)."""
    rows = []
    stream = host.unlabelled(labelled_as_unlabelled)
    for index, name in enumerate(host.source_names):
        rows.append({
            "source": name,
            "labelled": sum(host.sources[i] == index for i in host.labelled),
            "unlabelled_stream": sum(host.sources[i] == index for i in stream),
        })
    return rows


__all__ = [
    "DevicePool", "HostPool", "build_pool", "describe", "read_packed", "read_sources", "targets_of", "verify_archive",
]
