"""Grouped train / tune / validation splits of labelled folders, so no field sits on both sides.

Real data sets are often crops of a few larger fields (the 2018 Data Science Bowl cut many fields into
tiles) or frames of one field over time. A random split puts a crop's neighbour on the other side and
flatters the score. Images of one source are therefore grouped first, and whole groups are assigned:

- two images are linked when they have the same size and one edge of one continues the opposite edge of the
  other (the mean absolute difference across the seam is below `SEAM_RATIO` times the difference between the
  two outermost rows of either image, and clearly below the next best candidate: neighbouring tiles of one
  field), or
- when their 32 × 32 grey thumbnails correlate above `DUPLICATE_CORRELATION` (near-duplicates: the same
  field again, another frame, a re-crop);
- groups are the connected components of those links.

`write_split` lays the result out as folders of symbolic links in the challenge layout
(``OUT/<part>/<source>/images|labels``) plus ``OUT/groups.csv``, so training, ``app tune`` and
``benchmarks/accuracy.py`` read the same images without copying third-party data anywhere.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.transform import resize

from app.config import InferenceConfig
from app.errors import InputError
from app.normalize import read_normalized
from app.writer import write_atomic

THUMB = 32
DUPLICATE_CORRELATION = 0.8
SEAM_RATIO = 1.5
SEAM_UNIQUE = 0.7  # the best seam must be this much closer than the second best
MIN_EDGE_STD = 2.0  # grey levels: a flat edge (empty background) links nothing
PARTS = ("train", "tune", "val")
MAX_PIXELS = 150_000_000


@dataclass(frozen=True)
class Grey:
    """What grouping needs of one image: its normalised grey pixels."""

    name: str
    pixels: np.ndarray  # float32 H×W, 0..255


def grey_images(paths: list[Path], cfg: InferenceConfig | None = None) -> tuple[list[Grey], list[str]]:
    """Normalised grey versions of `paths` (as predict reads them); unreadable files become problems."""
    cfg = cfg or InferenceConfig()
    out: list[Grey] = []
    problems: list[str] = []
    for path in paths:
        try:
            out.append(Grey(path.name, read_normalized(path, MAX_PIXELS, cfg).astype(np.float32).mean(-1)))
        except InputError as error:
            problems.append(str(error))
    return out, problems


def _seam_links(images: list[np.ndarray]) -> list[tuple[int, int]]:
    """Pairs (i, j) of same-size images where i's bottom or right edge continues j's top or left edge."""
    links: list[tuple[int, int]] = []
    for axis in (0, 1):
        take = (lambda a, k: a[k]) if axis == 0 else (lambda a, k: a[:, k])
        last = np.stack([take(a, -1) for a in images])
        inner = np.stack([take(a, -2) for a in images])
        first = np.stack([take(a, 0) for a in images])
        second = np.stack([take(a, 1) for a in images])
        own_i = np.abs(last - inner).mean(1)  # roughness of i's outer rows
        own_j = np.abs(first - second).mean(1)
        cross = np.abs(last[:, None, :] - first[None, :, :]).mean(2)
        limit = SEAM_RATIO * (np.maximum(own_i[:, None], own_j[None, :]) + 1.0)
        textured = (last.std(1)[:, None] > MIN_EDGE_STD) & (first.std(1)[None, :] > MIN_EDGE_STD)
        np.fill_diagonal(cross, np.inf)
        if len(images) < 3:
            continue
        # A tile has one neighbour per side: keep only a best match that clearly beats the runner-up.
        ranked = np.sort(cross, axis=1)
        best = np.argmin(cross, axis=1)
        rows = np.arange(len(images))
        clear = ranked[:, 0] < SEAM_UNIQUE * ranked[:, 1]
        hit = (cross[rows, best] < limit[rows, best]) & textured[rows, best] & clear
        links.extend((int(i), int(best[i])) for i in np.nonzero(hit)[0])
    return links


def _duplicate_links(images: list[np.ndarray]) -> list[tuple[int, int]]:
    """Pairs whose standardised 32 × 32 thumbnails correlate above DUPLICATE_CORRELATION."""
    thumbs = np.stack([resize(a, (THUMB, THUMB), anti_aliasing=True).ravel() for a in images])
    thumbs = (thumbs - thumbs.mean(1, keepdims=True)) / (thumbs.std(1, keepdims=True) + 1e-6)
    corr = thumbs @ thumbs.T / thumbs.shape[1]
    np.fill_diagonal(corr, -1.0)
    return [(int(i), int(j)) for i, j in zip(*np.nonzero(corr > DUPLICATE_CORRELATION))]


def group_images(images: list[np.ndarray]) -> np.ndarray:
    """Group id (0..G-1, in order of first appearance) of every grey image."""
    n = len(images)
    if n == 0:
        return np.zeros(0, int)
    links: list[tuple[int, int]] = []
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(i)
    for members in by_shape.values():
        if len(members) < 2:
            continue
        chosen = [images[i] for i in members]
        for a, b in _seam_links(chosen) + _duplicate_links(chosen):
            links.append((members[a], members[b]))
    rows = [a for a, _ in links] + list(range(n))
    cols = [b for _, b in links] + list(range(n))
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    order: dict[int, int] = {}
    return np.array([order.setdefault(int(g), len(order)) for g in labels])


def assign_groups(groups: np.ndarray, fractions: dict[str, float], seed: int) -> list[str]:
    """Part name of every image: whole groups, in a seeded random order, fill each part up to its fraction
    of the images; the rest is "train". Every part named gets at least one group when there are enough."""
    n = len(groups)
    parts = ["train"] * n
    ids = np.unique(groups)
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(ids))
    sizes = {int(g): int((groups == g).sum()) for g in ids}
    for part, fraction in fractions.items():
        target = fraction * n
        taken = 0
        for g in list(order):
            if len(order) <= 1 or taken >= target:
                break
            if taken + sizes[int(g)] > max(target * 1.5, 1):  # a group too large for this part stays in train
                continue
            for i in np.nonzero(groups == g)[0]:
                parts[i] = part
            taken += sizes[int(g)]
            order.remove(g)
    return parts


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    os.symlink(os.path.abspath(target), link)


def write_split(
    sources: list[Path], out: Path, val: float, tune: float, seed: int
) -> list[dict[str, str]]:
    """Group and split each source folder (images/ + labels/) and lay out OUT/<part>/<source>/ as links."""
    from training.data import scan_pairs

    rows: list[dict[str, str]] = []
    for source in sources:
        samples, problems = scan_pairs(source)
        greys, bad = grey_images([s.image for s in samples])
        readable = {g.name for g in greys}
        samples = [s for s in samples if s.image.name in readable]
        groups = group_images([g.pixels for g in greys])
        parts = assign_groups(groups, {"val": val, "tune": tune}, seed)
        for sample, group, part in zip(samples, groups, parts):
            folder = out / part / source.name
            _link(sample.image, folder / "images" / sample.image.name)
            assert sample.label is not None
            _link(sample.label, folder / "labels" / sample.label.name)
            rows.append({"source": source.name, "image": sample.image.name, "group": f"{source.name}/{int(group)}",
                         "part": part})
        for problem in problems + bad:
            rows.append({"source": source.name, "image": problem, "group": "", "part": "skipped"})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["source", "image", "group", "part"])
    writer.writeheader()
    writer.writerows(rows)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "groups.csv", lambda handle: handle.write(buffer.getvalue().encode()))
    return rows


__all__ = ["PARTS", "assign_groups", "group_images", "grey_images", "write_split"]
