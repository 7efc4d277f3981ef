"""The official F1 of the NeurIPS 2022 Cell Segmentation challenge, for instance label maps.

Rules (see CHALLENGE in app/config.py): instances touching a `border_width` frame at the image border are
removed from ground truth and prediction, both are relabelled, and instances are matched one to one by the
Hungarian method on IoU, a match counting when IoU >= `match_iou`. Images with at least `tiled_eval_pixels`
pixels are zero-padded to multiples of `eval_tile` and scored tile by tile (border cells removed per tile),
TP/FP/FN summed. The challenge score is the mean F1 over images.

IoU is computed sparsely from the label pairs that actually overlap, so memory grows with the number of
overlapping pairs, never with (ground-truth cells x predicted cells x pixels).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from app.config import CHALLENGE, ChallengeRules
from app.errors import InputError


@dataclass(frozen=True)
class Scores:
    """Detection counts of one image and the figures derived from them; `missing` marks an absent prediction."""

    tp: int
    fp: int
    fn: int
    missing: bool = False

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if self.tp else 0.0


def relabel(labels: np.ndarray) -> np.ndarray:
    """Map the labels present in `labels` to 1..N (0 stays background), as int32."""
    labels = _as_labels(labels)
    top = int(labels.max(initial=0))
    if top <= 4 * labels.size + 1024:
        present = np.bincount(labels.ravel(), minlength=top + 1) > 0
        present[0] = False
        lut = np.zeros(top + 1, np.int32)
        lut[present] = np.arange(1, int(present.sum()) + 1, dtype=np.int32)
        return lut[labels]
    # Very sparse label values (e.g. hashes): a lookup table would be larger than the image.
    values, inverse = np.unique(labels, return_inverse=True)
    codes = inverse.reshape(labels.shape).astype(np.int32)
    return codes if values[0] == 0 else codes + 1


def remove_border_cells(labels: np.ndarray, width: int = CHALLENGE.border_width) -> np.ndarray:
    """Drop every instance with a pixel in the `width`-pixel frame at the border, then relabel 1..N."""
    labels = _as_labels(labels)
    if width > 0 and labels.size:
        frame = np.concatenate(
            [labels[:width].ravel(), labels[-width:].ravel(), labels[:, :width].ravel(), labels[:, -width:].ravel()]
        )
        touching = np.unique(frame)
        touching = touching[touching > 0]
        if touching.size:
            labels = np.where(np.isin(labels, touching), 0, labels)
    return relabel(labels)


def _as_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"label maps must be 2-D, got shape {labels.shape}")
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"label maps must hold integers, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("label maps must not hold negative labels")
    # bincount and lookup tables need a type that converts safely to the platform index type.
    return labels.astype(np.int64) if labels.dtype == np.uint64 else labels


def overlap_pairs(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every overlapping (gt, pred) pair of two sequentially labelled maps: (gt ids, pred ids, IoU)."""
    n_gt, n_pred = int(gt.max(initial=0)), int(pred.max(initial=0))
    area_gt = np.bincount(gt.ravel(), minlength=n_gt + 1)
    area_pred = np.bincount(pred.ravel(), minlength=n_pred + 1)
    both = (gt > 0) & (pred > 0)
    keys = gt[both].astype(np.int64) * (n_pred + 1) + pred[both]
    pair_keys, inter = np.unique(keys, return_counts=True)
    g, p = np.divmod(pair_keys, n_pred + 1)
    iou = inter / (area_gt[g] + area_pred[p] - inter)
    return g, p, iou


def _true_positives(g: np.ndarray, p: np.ndarray, iou: np.ndarray, threshold: float) -> int:
    """Largest number of one-to-one matches with IoU >= threshold, by the Hungarian method.

    Like the official code, the assignment first maximises the number of accepted matches and breaks ties by
    IoU. Only candidate pairs (IoU >= threshold) can count, so the problem splits into independent connected
    groups of candidates; almost all are a single pair, and the Hungarian method runs on each larger group.
    """
    keep = iou >= threshold
    g, p, iou = g[keep], p[keep], iou[keep]
    if g.size == 0:
        return 0
    _, gi = np.unique(g, return_inverse=True)
    _, pj = np.unique(p, return_inverse=True)
    n_rows, n_cols = int(gi.max()) + 1, int(pj.max()) + 1
    if n_rows == n_cols == g.size:
        return int(g.size)  # every candidate pair is disjoint from the others
    graph = coo_matrix((np.ones(g.size), (gi, n_rows + pj)), shape=(n_rows + n_cols,) * 2)
    _, component = connected_components(graph, directed=False)
    comp_of_edge = component[gi]
    tp = 0
    for comp in np.unique(comp_of_edge):
        sel = comp_of_edge == comp
        rows, r = np.unique(gi[sel], return_inverse=True)
        cols, c = np.unique(pj[sel], return_inverse=True)
        if rows.size == 1 or cols.size == 1:
            tp += 1
            continue
        n_min = min(rows.size, cols.size)
        cost = np.zeros((rows.size, cols.size))
        cost[r, c] = -1.0 - iou[sel] / (2 * n_min)
        ri, ci = linear_sum_assignment(cost)
        tp += int((cost[ri, ci] < 0).sum())
    return tp


def _counts_one(gt: np.ndarray, pred: np.ndarray, rules: ChallengeRules) -> tuple[int, int, int]:
    """TP/FP/FN of one image or tile after removing its border cells."""
    gt = remove_border_cells(gt, rules.border_width)
    pred = remove_border_cells(pred, rules.border_width)
    n_gt, n_pred = int(gt.max(initial=0)), int(pred.max(initial=0))
    if n_gt == 0 or n_pred == 0:
        return 0, n_pred, n_gt
    tp = _true_positives(*overlap_pairs(gt, pred), rules.match_iou)
    return tp, n_pred - tp, n_gt - tp


def match_counts(gt: np.ndarray, pred: np.ndarray, rules: ChallengeRules = CHALLENGE) -> tuple[int, int, int]:
    """(TP, FP, FN) of a predicted label map against ground truth under the official rules."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    if gt.ndim != 2:
        raise ValueError(f"label maps must be 2-D, got shape {gt.shape}")
    h, w = gt.shape
    if h * w < rules.tiled_eval_pixels:
        return _counts_one(gt, pred, rules)
    tile = rules.eval_tile
    tp = fp = fn = 0
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            # Edge tiles are zero-padded to full size, so their border frame lies on the padded edge.
            g = _padded_tile(gt, y, x, tile)
            p = _padded_tile(pred, y, x, tile)
            t, f_p, f_n = _counts_one(g, p, rules)
            tp, fp, fn = tp + t, fp + f_p, fn + f_n
    return tp, fp, fn


def _padded_tile(labels: np.ndarray, y: int, x: int, tile: int) -> np.ndarray:
    part = labels[y : y + tile, x : x + tile]
    if part.shape == (tile, tile):
        return part
    out = np.zeros((tile, tile), part.dtype)
    out[: part.shape[0], : part.shape[1]] = part
    return out


def image_scores(gt: np.ndarray, pred: np.ndarray, rules: ChallengeRules = CHALLENGE) -> Scores:
    """Scores of one image under the official rules."""
    return Scores(*match_counts(gt, pred, rules))


image_f1 = image_scores  # name used in docs/ARCHITECTURE.md


def read_labels(path: Path) -> np.ndarray:
    """Read an instance label TIFF as a 2-D integer array (singleton axes dropped)."""
    import tifffile

    try:
        labels = np.squeeze(tifffile.imread(str(path)))
    except Exception as exc:  # tifffile raises many types for damaged files
        raise InputError(path, f"cannot read label map ({exc})") from exc
    if labels.ndim != 2:
        raise InputError(path, f"label map must be 2-D, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.array_equal(labels, np.round(labels)):
            raise InputError(path, f"label map holds non-integer values ({labels.dtype})")
        labels = labels.astype(np.int64)
    return labels


def evaluate_folders(
    gt_dir: Path, pred_dir: Path, rules: ChallengeRules = CHALLENGE
) -> list[tuple[str, Scores]]:
    """Score every `<name>_label.tiff` of `gt_dir` against the file of the same name in `pred_dir`.

    A missing prediction counts every (non-border) ground-truth cell as a false negative and is marked
    `missing`. Results are sorted by file name.
    """
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    results: list[tuple[str, Scores]] = []
    for gt_path in sorted(gt_dir.glob(f"*{rules.output_suffix}")):
        if gt_path.name.startswith("."):
            continue
        gt = read_labels(gt_path)
        pred_path = pred_dir / gt_path.name
        if not pred_path.exists():
            n_gt = match_counts(gt, np.zeros_like(gt), rules)[2]
            results.append((gt_path.name, Scores(0, 0, n_gt, missing=True)))
            continue
        pred = read_labels(pred_path)
        if pred.shape != gt.shape:
            raise InputError(pred_path, f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
        results.append((gt_path.name, image_scores(gt, pred, rules)))
    return results


def mean_f1(results: Iterable[Scores | tuple[str, Scores]]) -> float:
    """Mean F1 over images (the challenge score); accepts Scores or (name, Scores) pairs; 0 for none."""
    f1s = [(r[1] if isinstance(r, tuple) else r).f1 for r in results]
    return float(np.mean(f1s)) if f1s else 0.0


SCORE_HEADER = ("image", "tp", "fp", "fn", "precision", "recall", "f1", "note")


def score_rows(results: list[tuple[str, Scores]]) -> list[list[str]]:
    """One row of strings per scored image, in `SCORE_HEADER`'s order (the CSV of `app evaluate`)."""
    return [
        [name, str(s.tp), str(s.fp), str(s.fn), f"{s.precision:.4f}", f"{s.recall:.4f}", f"{s.f1:.4f}",
         "missing prediction" if s.missing else ""]
        for name, s in results
    ]


def score_report(results: list[tuple[str, Scores]]) -> list[str]:
    """The lines `app evaluate` prints: a table of the images, the count of missing predictions (when any) and
    the mean F1 last."""
    rows = score_rows(results)
    width = max(len(SCORE_HEADER[0]), *(len(r[0]) for r in rows))
    lines = [f"{SCORE_HEADER[0]:<{width}}  {'tp':>6} {'fp':>6} {'fn':>6} {'prec':>7} {'recall':>7} {'f1':>7}"]
    lines += [f"{r[0]:<{width}}  {r[1]:>6} {r[2]:>6} {r[3]:>6} {r[4]:>7} {r[5]:>7} {r[6]:>7}  {r[7]}".rstrip()
              for r in rows]
    missing = sum(s.missing for _, s in results)
    if missing:
        lines.append(f"{missing} of {len(results)} predictions missing (scored as all false negatives)")
    lines.append(f"mean F1: {mean_f1(results):.4f} over {len(results)} images")
    return lines


__all__ = [
    "SCORE_HEADER",
    "Scores",
    "evaluate_folders",
    "image_f1",
    "image_scores",
    "match_counts",
    "mean_f1",
    "overlap_pairs",
    "read_labels",
    "score_report",
    "score_rows",
    "relabel",
    "remove_border_cells",
]
