"""Build a kit: data folders packed, synthetic folders as recipes, the wheels, a manifest; within the limits.

Each labelled folder (challenge layout: images/, labels/, unlabeled/) becomes one archive (`store`) holding its
images as `read_normalized` gives them and its label maps, after the checks `training.data.prepare_sample`
makes (a label of another size or without cells, an unreadable file: skipped, one line each). A folder written
by `python -m training synth` can travel as its recipe instead (`synthetic`), checked against its files here.
The kit is built in a temporary folder beside its destination and moved there only when it fits the limits:
at most `Limits.kit_mib`, and with the repository's working tree at most `Limits.travel_mib`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from app.config import InferenceConfig
from app.errors import InputError
from app.manifest import sha256_file
from app.normalize import read_normalized
from training.data import load_labels, scan_pairs, scan_unlabelled
from training.gpu_kit.layout import (
    CARRIED,
    KIT_VERSION,
    LAYOUT,
    LIMITS,
    MIB,
    REPO,
    WHEEL_TARGET,
    Limits,
    pinned,
    write_manifest,
)
from training.gpu_kit.store import Encoded, Entry, encode_entry, write_archive
from training.gpu_kit.synthetic import SynthRecipe, check_recipe

log = logging.getLogger(__name__)

FIT_SEED = 0  # seed of the order in which a source's images are kept when not all fit
RESERVE_BYTES = 256 * 1024  # manifest, archive indexes and zip headers


@dataclass(frozen=True)
class SourceSpec:
    """One data folder of the kit: packed from its files, or (with a recipe) regenerated where the kit runs."""

    folder: Path
    recipe: SynthRecipe | None = None


# --- one folder ------------------------------------------------------------------------------------------------


def read_entry(name: str, image: Path, label: Path | None, norm: InferenceConfig) -> Entry:
    """An image (and its labels) as the trainer reads them, with `prepare_sample`'s checks; InputError if bad."""
    rgb = read_normalized(image, norm.max_pixels, norm)
    if label is None:
        return Entry(name, rgb)
    labels = load_labels(label)
    if labels.shape != rgb.shape[:2]:
        raise InputError(label, f"label is {labels.shape[0]}×{labels.shape[1]} but its image is "
                                f"{rgb.shape[0]}×{rgb.shape[1]}")
    if not labels.any():
        raise InputError(label, "label map has no cells")
    return Entry(name, rgb, labels)


def _pack_job(args: tuple[str, Path, Path | None, InferenceConfig]) -> Encoded | str:
    """Read, check and encode one file (in a worker process): the encoded entry, or the problem as one line."""
    try:
        return encode_entry(read_entry(*args))
    except InputError as error:
        return str(error)


def folder_jobs(folder: Path, norm: InferenceConfig) -> tuple[list[tuple[str, Path, Path | None, InferenceConfig]],
                                                               list[str]]:
    """The files of one challenge-layout folder to pack (labelled first, then unlabeled/), and problems found."""
    labelled, problems = scan_pairs(folder)
    jobs = [(s.name, s.image, s.label, norm) for s in labelled]
    jobs += [(s.name, s.image, None, norm) for s in scan_unlabelled(folder)]
    return jobs, problems


def encode_folder(folder: Path, norm: InferenceConfig, workers: int = 1) -> tuple[list[Encoded], list[str]]:
    """Every usable file of one folder read, checked and encoded (labelled first), and the problems found."""
    jobs, problems = folder_jobs(folder, norm)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(_pack_job, jobs, chunksize=2))
    else:
        results = [_pack_job(job) for job in jobs]
    encoded = [r for r in results if isinstance(r, Encoded)]
    problems += [r for r in results if isinstance(r, str)]
    for problem in problems:
        log.warning(f"{folder.name}/{problem}")
    if not any(e.labels is not None for e in encoded):
        raise ValueError(f"{folder.name}: no usable labelled image (images/ + labels/)")
    return encoded, problems


def keep_order(n: int, source: int, seed: int = FIT_SEED) -> np.ndarray:
    """The order in which a source's entries are kept when not all fit: a seeded permutation."""
    return np.random.default_rng([seed, source]).permutation(n)


def fit_counts(sizes: list[list[int]], budget: int) -> list[int]:
    """How many entries of each packed source to keep (a prefix of its `keep_order`) so that all fit `budget`:
    every one when they fit; else every source keeps the same share of its entries, rounded down (at least
    one), the largest share that fits, and the room left is then filled one entry at a time, always for the
    source that kept the smallest share."""
    orders = [np.asarray(s, dtype=np.int64)[keep_order(len(s), k)] for k, s in enumerate(sizes)]
    lengths = [len(s) for s in sizes]

    def cost(counts: list[int]) -> int:
        return int(sum(order[:count].sum() for order, count in zip(orders, counts)))

    def share(fraction: float) -> list[int]:
        return [min(n, max(1, math.floor(fraction * n + 1e-9))) if n else 0 for n in lengths]

    if cost(lengths) <= budget:
        return lengths
    if cost(share(0.0)) > budget:
        raise ValueError(f"not one image of each packed folder fits the kit's {budget / MIB:.2f} MiB for data")
    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if cost(share(middle)) <= budget else (low, middle)
    counts = share(low)
    spent = cost(counts)
    while True:
        open_ = [k for k, n in enumerate(lengths) if counts[k] < n and spent + orders[k][counts[k]] <= budget]
        if not open_:
            return counts
        k = min(open_, key=lambda j: counts[j] / lengths[j])
        spent += int(orders[k][counts[k]])
        counts[k] += 1


def pack_record(archive: Path, kept: list[Encoded], left_out: list[Encoded], problems: list[str]) -> dict[str, Any]:
    """The manifest record of one packed folder: counts, what was left out or skipped, size, sha256."""
    return {
        "kind": "packed",
        "archive": archive.relative_to(archive.parents[1]).as_posix(),
        "labelled": sum(e.labels is not None for e in kept),
        "unlabelled": sum(e.labels is None for e in kept),
        "pixels": int(sum(e.shape[0] * e.shape[1] for e in kept)),
        "left_out": [e.name for e in left_out],
        "skipped": problems,
        **file_record(archive),
    }


def file_record(path: Path) -> dict[str, Any]:
    """Size and sha256 of one file of the kit."""
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


# --- wheels ----------------------------------------------------------------------------------------------------


def wheel_matches(path: Path, pin: str) -> bool:
    """A wheel file is the pinned distribution and version (wheel names use underscores)."""
    name, version = pin.split("==")
    stem = path.name.lower()
    return stem.startswith(f"{name.lower().replace('-', '_')}-{version}-")


def fetch_wheels(dest: Path, source: Path | None = None) -> list[dict[str, Any]]:
    """The carried packages' wheels in `dest`: copied from `source` when given, else `pip download`ed for the
    target machine (Python 3.12, manylinux x86-64; these are pure-Python wheels)."""
    pins = pinned(list(CARRIED.values()))
    dest.mkdir(parents=True, exist_ok=True)
    if source is None:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", *WHEEL_TARGET, "-q", "-d", str(dest), *pins]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"pip download {' '.join(pins)} failed: {tail}")
    else:
        for path in sorted(Path(source).glob("*.whl")):
            if any(wheel_matches(path, pin) for pin in pins):
                shutil.copy2(path, dest / path.name)
    records = []
    for pin in pins:
        found = [p for p in sorted(dest.glob("*.whl")) if wheel_matches(p, pin)]
        if len(found) != 1:
            raise FileNotFoundError(f"{dest.name}: {len(found)} wheels for {pin} (need exactly one)")
        records.append({"pin": pin, "file": found[0].name, **file_record(found[0])})
    return records


# --- sizes -----------------------------------------------------------------------------------------------------


def tree_bytes(repo: Path = REPO) -> int:
    """Bytes of the repository's files that travel with any command: tracked files and untracked ones that git
    does not ignore (0 outside a git checkout)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=repo, capture_output=True, check=True, timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    total = 0
    for name in {n for n in listed.decode().split("\0") if n}:
        path = repo / name
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def large_untracked(repo: Path = REPO, least: int = MIB) -> list[tuple[str, int]]:
    """Untracked files git does not ignore, of at least `least` bytes: they travel too, often by mistake."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--others", "--exclude-standard"], cwd=repo,
                                capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    sizes = [(n, (repo / n).stat().st_size) for n in listed.decode().split("\0") if n and (repo / n).is_file()]
    return sorted([(n, size) for n, size in sizes if size >= least], key=lambda item: -item[1])


def kit_limit(limits: Limits, tree: int) -> int:
    """The most bytes the kit may take: its own limit, and what the transfer leaves beside the working tree."""
    return int(min(limits.kit_mib * MIB, (limits.travel_mib - limits.margin_mib) * MIB - tree))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


# --- the kit ---------------------------------------------------------------------------------------------------


def build_kit(
    out: Path,
    sources: list[SourceSpec],
    wheels_from: Path | None = None,
    workers: int = 1,
    preset: str = "long",
    limits: Limits = LIMITS,
    repo: Path | None = REPO,
    norm: InferenceConfig = InferenceConfig(),
    check_every: bool = False,
) -> dict[str, Any]:
    """Build the kit at `out` (replacing an earlier one only when the new one is complete and fits); returns
    its manifest. `repo` None skips the working-tree part of the size check."""
    if not sources:
        raise ValueError("a kit needs at least one data folder")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tree = tree_bytes(repo) if repo is not None else 0
    limit = kit_limit(limits, tree)
    for name, size in large_untracked(repo) if repo is not None else []:
        log.warning(f"{name} ({size / MIB:.1f} MiB, untracked) travels with the working tree and takes room from "
                    "the kit: remove it, or have git ignore it")
    with tempfile.TemporaryDirectory(prefix=f".{out.name}-", dir=out.parent) as tmp:
        work = Path(tmp)
        wheels = fetch_wheels(work / LAYOUT.wheels, wheels_from)
        records: list[dict[str, Any]] = []
        packed: dict[int, tuple[list[Encoded], list[str]]] = {}
        for index, spec in enumerate(sources):
            folder = Path(spec.folder)
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder}: data folder not found")
            record: dict[str, Any] = {"index": index, "name": folder.name}
            if spec.recipe is not None:
                checked = check_recipe(folder, spec.recipe, norm, every=check_every)
                record.update(kind="synthetic", recipe=spec.recipe.to_dict(), checked=checked,
                              labelled=spec.recipe.labelled, unlabelled=spec.recipe.unlabelled)
                log.info(f"{folder.name}: synthetic, seed {spec.recipe.seed}; {checked} images regenerated match")
            else:
                packed[index] = encode_folder(folder, norm, workers)
                log.info(f"{folder.name}: {len(packed[index][0])} images encoded")
            records.append(record)
        budget = limit - sum(w["bytes"] for w in wheels) - RESERVE_BYTES
        counts = fit_counts([[e.size for e in packed[i][0]] for i in packed], budget)
        for (index, (encoded, problems)), count in zip(packed.items(), counts):
            keep = set(keep_order(len(encoded), index)[:count].tolist())
            kept = [e for k, e in enumerate(encoded) if k in keep]
            left_out = [e for k, e in enumerate(encoded) if k not in keep]
            archive = work / LAYOUT.sources / f"{index}_{records[index]['name']}{LAYOUT.archive_suffix}"
            write_archive(archive, kept)
            records[index].update(pack_record(archive, kept, left_out, problems))
            note = f", {len(left_out)} left out to fit the limit" if left_out else ""
            log.info(f"{records[index]['name']}: {records[index]['labelled']} labelled, "
                     f"{records[index]['unlabelled']} unlabelled, {records[index]['bytes'] / MIB:.1f} MiB{note}")
        manifest = {
            "version": KIT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "preset": preset,
            "normalisation": {"norm_low_percentile": norm.norm_low_percentile,
                              "norm_high_percentile": norm.norm_high_percentile,
                              "norm_sample_pixels": norm.norm_sample_pixels, "max_pixels": norm.max_pixels},
            "sources": records,
            "wheels": wheels,
            "travel": {"tree_bytes": tree, "kit_limit_bytes": limit},
        }
        write_manifest(work, manifest)
        size = folder_bytes(work)
        if size > limit:
            raise ValueError(
                f"{out.name}: the kit would take {size / MIB:.1f} MiB, over its limit of {limit / MIB:.1f} MiB "
                f"({limits.kit_mib:g} MiB, and {limits.travel_mib:g} MiB with the working tree's "
                f"{tree / MIB:.1f} MiB); pack fewer folders"
            )
        manifest["bytes"] = size
        write_manifest(work, manifest)
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
        work.mkdir()  # the temporary folder's context removes what it expects to find
    log.info(f"kit {out}: {size / MIB:.1f} MiB of {limit / MIB:.1f} MiB allowed")
    return manifest


__all__ = [
    "SourceSpec",
    "build_kit",
    "fetch_wheels",
    "file_record",
    "folder_jobs",
    "kit_limit",
    "large_untracked",
    "encode_folder",
    "fit_counts",
    "keep_order",
    "read_entry",
    "tree_bytes",
    "wheel_matches",
]
