"""Official F1 on hand-made label maps with known TP/FP/FN."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import tifffile

from app.config import CHALLENGE
from app.errors import InputError
from app.metric import (
    Scores,
    _true_positives,
    evaluate_folders,
    image_scores,
    match_counts,
    mean_f1,
    overlap_pairs,
    relabel,
    remove_border_cells,
)


def boxes(shape: tuple[int, int], rects: list[tuple[int, int, int, int]], dtype=np.int32) -> np.ndarray:
    """Label map with rectangle k+1 at rects[k] = (y0, x0, y1, x1), later ones drawn on top."""
    out = np.zeros(shape, dtype)
    for k, (y0, x0, y1, x1) in enumerate(rects, start=1):
        out[y0:y1, x0:x1] = k
    return out


def test_identical_maps_are_all_true_positives() -> None:
    gt = boxes((40, 40), [(5, 5, 15, 15), (20, 20, 30, 35), (5, 25, 12, 33)])
    assert match_counts(gt, gt) == (3, 0, 0)
    scores = image_scores(gt, gt)
    assert (scores.precision, scores.recall, scores.f1) == (1.0, 1.0, 1.0)


def test_label_values_do_not_matter() -> None:
    gt = boxes((40, 40), [(5, 5, 15, 15), (20, 20, 30, 35)])
    pred = np.where(gt == 1, 700, np.where(gt == 2, 3, 0)).astype(np.uint16)
    assert match_counts(gt, pred) == (2, 0, 0)


def test_iou_exactly_half_matches_and_just_below_does_not() -> None:
    gt = boxes((30, 40), [(10, 10, 20, 20)])  # 100 px
    half = boxes((30, 40), [(10, 10, 20, 15)])  # 50 px inside: IoU 0.5
    below = boxes((30, 40), [(10, 10, 20, 15)])
    below[10, 14] = 0  # 49 px inside: IoU 0.49
    assert match_counts(gt, half) == (1, 0, 0)
    assert match_counts(gt, below) == (0, 1, 1)


def test_iou_just_above_half_with_shift() -> None:
    gt = boxes((30, 40), [(10, 10, 20, 20)])
    shifted = boxes((30, 40), [(10, 13, 20, 23)])  # 70 / 130 = 0.538
    far = boxes((30, 40), [(10, 14, 20, 24)])  # 60 / 140 = 0.43
    assert match_counts(gt, shifted) == (1, 0, 0)
    assert match_counts(gt, far) == (0, 1, 1)


def test_split_cell_gives_one_match_at_most() -> None:
    gt = boxes((30, 40), [(5, 5, 25, 25)])  # 400 px
    big_and_small = boxes((30, 40), [(5, 5, 25, 19), (5, 19, 25, 25)])  # 280 px (IoU 0.7) + 120 px
    halves = boxes((30, 40), [(5, 5, 25, 14), (5, 14, 25, 25)])  # 180 and 220 px: IoU 0.45, 0.55
    thirds = boxes((30, 40), [(5, 5, 25, 12), (5, 12, 25, 19), (5, 19, 25, 25)])
    assert match_counts(gt, big_and_small) == (1, 1, 0)
    assert match_counts(gt, halves) == (1, 1, 0)
    assert match_counts(gt, thirds) == (0, 3, 1)


def test_merged_cells() -> None:
    gt = boxes((30, 40), [(5, 5, 25, 17), (5, 17, 25, 25)])  # 240 + 160 px
    merged = boxes((30, 40), [(5, 5, 25, 25)])  # IoU 0.6 with the larger one
    assert match_counts(gt, merged) == (1, 0, 1)
    even = boxes((30, 40), [(5, 5, 25, 15), (5, 15, 25, 25)])
    assert match_counts(even, merged) == (1, 0, 1)  # both at IoU 0.5: still one match


def test_hungarian_maximises_the_number_of_matches() -> None:
    """On a chain of candidates (X~A, X~B, Y~B) a greedy best-IoU pick of X-B would lose a match."""
    g = np.array([1, 2, 2])
    p = np.array([1, 1, 2])
    iou = np.array([0.55, 0.9, 0.6])
    assert _true_positives(g, p, iou, 0.5) == 2
    assert _true_positives(g, p, np.array([0.55, 0.9, 0.4]), 0.5) == 1
    assert _true_positives(np.array([1, 2]), np.array([3, 4]), np.array([0.5, 0.7]), 0.5) == 2


def test_two_halves_at_exactly_half_give_one_match_each() -> None:
    # Each 2-px cell is split into two 1-px predictions, both at IoU 0.5: one match per cell.
    gt = np.zeros((10, 30), np.int32)
    gt[5, 2:4] = 1  # A = {2, 3}
    gt[5, 10:12] = 2  # B = {10, 11}
    pred = np.zeros_like(gt)
    pred[5, 3] = 1  # X ~ A: 1/2
    pred[5, 2] = 2  # Y ~ A: 1/2
    pred[5, 10] = 3  # Z ~ B: 1/2
    pred[5, 11] = 4  # W ~ B: 1/2
    assert match_counts(gt, pred) == (2, 2, 0)


def test_border_cells_are_removed_from_both_maps() -> None:
    gt = boxes((40, 40), [(1, 10, 8, 20), (15, 15, 25, 25), (30, 38, 35, 40)])
    assert remove_border_cells(gt).max() == 1
    pred = np.zeros_like(gt)  # predicted nothing: border cells must not count as misses
    assert match_counts(gt, pred) == (0, 0, 1)
    pred_border_only = boxes((40, 40), [(0, 0, 5, 5)])  # a false positive on the frame is ignored
    assert match_counts(np.zeros_like(gt), pred_border_only) == (0, 0, 0)
    # A cell two pixels from the edge is inside the frame only at offsets 0 and 1.
    inside = boxes((40, 40), [(2, 2, 10, 10)])
    on_frame = boxes((40, 40), [(1, 2, 10, 10)])
    assert remove_border_cells(inside).max() == 1
    assert remove_border_cells(on_frame).max() == 0


def test_removal_happens_before_matching() -> None:
    # The ground-truth cell touches the frame, the predicted one is shifted inward: neither counts.
    gt = boxes((40, 40), [(0, 10, 10, 20)])
    pred = boxes((40, 40), [(2, 10, 12, 20)])
    assert match_counts(gt, pred) == (0, 1, 0)


def test_relabel_is_sequential_and_handles_sparse_values() -> None:
    labels = np.array([[0, 5, 5], [9, 0, 2_000_000_000]], np.int64)
    out = relabel(labels)
    assert out.dtype == np.int32
    assert out.tolist() == [[0, 1, 1], [2, 0, 3]]


def test_overlap_pairs_match_dense_iou() -> None:
    rng = np.random.default_rng(0)
    gt = relabel(rng.integers(0, 6, (30, 30)))
    pred = relabel(rng.integers(0, 5, (30, 30)))
    g, p, iou = overlap_pairs(gt, pred)
    for i, j, v in zip(g, p, iou):
        a, b = gt == i, pred == j
        assert v == pytest.approx((a & b).sum() / (a | b).sum())
    assert len(g) == len({(i, j) for i, j in zip(gt[(gt > 0) & (pred > 0)], pred[(gt > 0) & (pred > 0)])})


def test_empty_maps_and_f1_rules() -> None:
    empty = np.zeros((20, 20), np.uint16)
    assert image_scores(empty, empty) == Scores(0, 0, 0)
    assert image_scores(empty, empty).f1 == 0.0
    s = Scores(tp=3, fp=1, fn=2)
    assert s.precision == pytest.approx(0.75)
    assert s.recall == pytest.approx(0.6)
    assert s.f1 == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert mean_f1([s, Scores(0, 4, 4)]) == pytest.approx(s.f1 / 2)
    assert mean_f1([("a", s)]) == pytest.approx(s.f1)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        match_counts(np.zeros((4, 4), int), np.zeros((4, 5), int))


def test_tiled_rule_on_small_tiles() -> None:
    """Same rule with a tiny tile size: cells cut by a tile edge are removed in both tiles."""
    rules = replace(CHALLENGE, tiled_eval_pixels=100, eval_tile=20)
    gt = boxes((30, 50), [(5, 5, 10, 10), (5, 17, 10, 24), (24, 24, 28, 28), (5, 42, 9, 47)])
    # cell 2 crosses x = 20 (a tile edge); cell 4 lies in the zero-padded last column of tiles, clear of its frame.
    assert match_counts(gt, gt, rules) == (3, 0, 0)
    assert match_counts(gt, gt) == (4, 0, 0)  # untiled: every cell counts


def test_tiled_rule_on_a_25_megapixel_image() -> None:
    n = 5000
    assert n * n >= CHALLENGE.tiled_eval_pixels
    gt = np.zeros((n, n), np.uint16)
    gt[100:120, 100:120] = 1  # inside tile (0, 0)
    gt[1990:2010, 500:520] = 2  # crosses the tile edge at y = 2000: removed
    gt[4500:4520, 4500:4520] = 3  # inside the last, zero-padded tile
    gt[4985:4995, 10:30] = 4  # near the image edge but > 2 px from it; the padded tile ends at 6000
    pred = gt.copy()
    pred[100:120, 100:110] = 0  # IoU 0.5 still matches
    pred[4500:4520, 4500:4520] = 0
    pred[3000:3010, 3000:3010] = 9  # a false positive
    assert match_counts(gt, pred) == (2, 1, 1)
    small = gt[:4000, :4000]  # under 25 MP: whole-image rule, the crossing cell counts
    assert match_counts(small, small) == (2, 0, 0)


def test_evaluate_folders_pairs_names_and_reports_missing(tmp_path) -> None:
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    a = boxes((40, 40), [(5, 5, 15, 15), (20, 20, 30, 30)])
    tifffile.imwrite(gt_dir / "a_label.tiff", a.astype(np.uint16), compression="zlib")
    tifffile.imwrite(gt_dir / "b_label.tiff", a.astype(np.int16))
    tifffile.imwrite(gt_dir / "notes.tiff", a)  # not a label file: ignored
    tifffile.imwrite(pred_dir / "a_label.tiff", (a == 1).astype(np.uint16))
    results = evaluate_folders(gt_dir, pred_dir)
    assert [name for name, _ in results] == ["a_label.tiff", "b_label.tiff"]
    assert results[0][1] == Scores(1, 0, 1)
    assert results[1][1] == Scores(0, 0, 2, missing=True)
    assert mean_f1(results) == pytest.approx((2 / 3) / 2)


def test_evaluate_folders_refuses_mismatched_shapes(tmp_path) -> None:
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    tifffile.imwrite(tmp_path / "gt" / "x_label.tiff", np.zeros((10, 10), np.uint16))
    tifffile.imwrite(tmp_path / "pred" / "x_label.tiff", np.zeros((10, 12), np.uint16))
    with pytest.raises(InputError, match="x_label.tiff"):
        evaluate_folders(tmp_path / "gt", tmp_path / "pred")


def _dense_reference(gt: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """Straightforward dense version of the official computation, for cross-checking on small maps."""
    from scipy.optimize import linear_sum_assignment

    gt, pred = remove_border_cells(gt), remove_border_cells(pred)
    n_gt, n_pred = gt.max(), pred.max()
    if n_pred == 0:
        return 0, 0, int(n_gt)
    iou = np.zeros((n_gt, n_pred))
    for i in range(1, n_gt + 1):
        for j in range(1, n_pred + 1):
            a, b = gt == i, pred == j
            iou[i - 1, j - 1] = (a & b).sum() / (a | b).sum()
    cost = -(iou >= 0.5).astype(float) - iou / (2 * min(iou.shape))
    r, c = linear_sum_assignment(cost)
    tp = int((iou[r, c] >= 0.5).sum())
    return tp, int(n_pred) - tp, int(n_gt) - tp


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_dense_reference_on_random_maps(seed: int) -> None:
    rng = np.random.default_rng(seed)

    def random_map() -> np.ndarray:
        rects = []
        for _ in range(12):
            y, x = rng.integers(0, 56, 2)
            h, w = rng.integers(3, 12, 2)
            rects.append((y, x, y + h, x + w))
        return boxes((64, 64), rects)

    gt = random_map()
    pred = np.where(rng.random() < 0.5, np.roll(gt, rng.integers(-3, 4), axis=1), random_map())
    assert match_counts(gt, pred) == _dense_reference(gt, pred)
    assert match_counts(gt, gt) == _dense_reference(gt, gt)
