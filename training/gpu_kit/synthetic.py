"""A synthetic data folder carried as the recipe that made it, and regenerated where the kit runs.

`python -m training synth` draws every image from (seed, split, index) alone, so a folder it wrote is fully
described by its seed, size range, modalities and counts: a few bytes instead of hundreds of megabytes. The
packer checks the recipe against the folder (a spread of its images, one of every storage format among them,
regenerated and compared with what `read_normalized` and `load_labels` read from the files) before it trusts it.

Regeneration gives what the trainer reads from the files without writing them: the stored array of a lossless
format is what the reader returns; a JPEG image goes through the generator's own writer and the app's reader in
a temporary file (its compression is part of the data).
"""

from __future__ import annotations

import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from app.config import CHALLENGE, InferenceConfig
from app.normalize import normalize, read_normalized, to_rgb
from training.gpu_kit.env import worker_setup
from training.gpu_kit.store import Entry
from training.synth.params import MODALITY_NAMES, SynthConfig

LOSSY = (".jpg", ".jpeg")
SPOT_CHECKS = 2  # images checked per storage format (first and last of it), besides the first of each split


@dataclass(frozen=True)
class SynthRecipe:
    """What `python -m training synth` was given for one folder."""

    seed: int
    min_size: int
    max_size: int
    labelled: int
    unlabelled: int
    modalities: tuple[str, ...] = field(default=MODALITY_NAMES)

    def config(self) -> SynthConfig:
        return SynthConfig(min_size=self.min_size, max_size=self.max_size).select(list(self.modalities))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "modalities": list(self.modalities)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SynthRecipe":
        return cls(**{**data, "modalities": tuple(data["modalities"])})

    def jobs(self) -> list[tuple[str, int]]:
        """(split, index) of every image, labelled first, as the folder lists them."""
        return [("labelled", i) for i in range(self.labelled)] + [("unlabelled", i) for i in range(self.unlabelled)]


def stored_as_read(image: np.ndarray, layout: str) -> np.ndarray:
    """The H×W×C array the app's reader returns for a losslessly stored image of this layout."""
    if layout == "gray":
        return image[..., np.newaxis]
    if layout == "chw":
        return np.moveaxis(image, 0, -1)
    return image


def regenerate(recipe: SynthRecipe, split: str, index: int, norm: InferenceConfig = InferenceConfig()) -> Entry:
    """One image of the recipe as the trainer would read it from the folder (normalised uint8 H×W×3, int32
    labels for a labelled image)."""
    from training.synth.generate import make_sample

    sample = make_sample(recipe.seed, split, index, recipe.config())
    if sample.fmt.ext in LOSSY:
        from app.reader import read_image
        from training.synth.writer import write_image

        with tempfile.TemporaryDirectory(prefix="mt2-synth-") as tmp:
            path = Path(tmp) / sample.file_name
            write_image(path, sample.image, sample.fmt, sample.jpeg_quality, sample.tiff_zlib)
            raw = read_image(path, norm.max_pixels)
    else:
        raw = stored_as_read(sample.image, sample.fmt.layout)
    image = normalize(to_rgb(raw), norm)
    return Entry(sample.name, image, sample.labels.astype(np.int32) if split == "labelled" else None)


def _regenerate_job(args: tuple[dict[str, Any], str, int]) -> Entry:
    recipe, split, index = args
    return regenerate(SynthRecipe.from_dict(recipe), split, index)


def regenerate_all(recipe: SynthRecipe, workers: int = 1) -> list[Entry]:
    """Every image of the recipe, labelled first, in `workers` processes (the result does not depend on them)."""
    jobs = [(recipe.to_dict(), split, index) for split, index in recipe.jobs()]
    if workers <= 1 or len(jobs) < 2:
        return [_regenerate_job(job) for job in jobs]
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=worker_setup) as pool:
        return list(pool.map(_regenerate_job, jobs, chunksize=4))


def folder_recipe(folder: Path, seed: int, size: tuple[int, int], modalities: tuple[str, ...]) -> SynthRecipe:
    """The recipe of a synth folder from its meta.csv (counts) and the given seed, sizes and modalities."""
    from training.synth.generate import META_FILE
    from training.synth.writer import read_meta

    meta = Path(folder) / META_FILE
    if not meta.is_file():
        raise ValueError(f"{Path(folder).name}: no {META_FILE}, so not a folder written by python -m training synth")
    rows = read_meta(meta)
    counts = {split: sum(r["split"] == split for r in rows) for split in ("labelled", "unlabelled")}
    return SynthRecipe(seed, size[0], size[1], counts["labelled"], counts["unlabelled"], tuple(modalities))


def spot_checks(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows to regenerate and compare: the first of each split and the first and last of each format."""
    chosen: dict[str, dict[str, Any]] = {}
    for split in ("labelled", "unlabelled"):
        mine = [r for r in rows if r["split"] == split]
        if mine:
            chosen.setdefault(mine[0]["name"], mine[0])
    formats = sorted({r["format"] for r in rows})
    for fmt in formats:
        mine = [r for r in rows if r["format"] == fmt]
        for r in (mine[0], mine[-1])[:SPOT_CHECKS]:
            chosen.setdefault(r["name"], r)
    return list(chosen.values())


def check_recipe(folder: Path, recipe: SynthRecipe, norm: InferenceConfig = InferenceConfig(),
                 every: bool = False) -> int:
    """Regenerate a spread of the folder's images (all with `every`) and compare them with the files; returns
    how many were compared; ValueError naming the first image that differs."""
    from training.data import load_labels
    from training.synth.generate import META_FILE
    from training.synth.writer import read_meta

    folder = Path(folder)
    rows = read_meta(folder / META_FILE)
    for row in rows if every else spot_checks(rows):
        index = int(row["name"].rsplit("_", 1)[1]) - 1
        entry = regenerate(recipe, row["split"], index, norm)
        problem = ""
        image = read_normalized(folder / row["file"], norm.max_pixels, norm)
        if not np.array_equal(image, entry.image):
            problem = "image"
        elif entry.labels is not None:
            label = folder / "labels" / f"{row['name']}{CHALLENGE.output_suffix}"
            if not np.array_equal(load_labels(label), entry.labels):
                problem = "labels"
        if problem:
            raise ValueError(
                f"{folder.name}/{row['file']}: {problem} differ from synth seed {recipe.seed}, sizes "
                f"{recipe.min_size}-{recipe.max_size}; give the seed and sizes the folder was made with, or pack "
                "its files (--data)"
            )
    return len(rows) if every else len(spot_checks(rows))


__all__ = [
    "SynthRecipe",
    "check_recipe",
    "folder_recipe",
    "regenerate",
    "regenerate_all",
    "spot_checks",
    "stored_as_read",
]
