"""Classical baseline on drawn discs: polarity per modality, touching discs split, specks removed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from skimage.draw import disk

from app.metric import match_counts, read_labels
from benchmarks.baseline import BaselineConfig, foreground_mask, segment_image, segment_rgb, split_touching

# Two touching discs, one alone, one small speck (below min_area).
DISCS = (((40, 40), 14), ((40, 65), 14), ((90, 90), 12))
SPECK = ((100, 30), 2)


def disc_labels(shape: tuple[int, int] = (128, 128)) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.int32)
    for i, (centre, radius) in enumerate(DISCS, start=1):
        rr, cc = disk(centre, radius, shape=shape)
        labels[rr, cc] = i
    return labels


def speck_mask(shape: tuple[int, int] = (128, 128)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    rr, cc = disk(*SPECK, shape=shape)
    mask[rr, cc] = True
    return mask


def noisy(img: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def assert_all_found(gt: np.ndarray, pred: np.ndarray) -> None:
    tp, fp, fn = match_counts(gt, pred)
    assert (tp, fp, fn) == (len(DISCS), 0, 0)


def test_fluorescence_discs_bright_on_dark_with_empty_red() -> None:
    gt = disc_labels()
    rgb = np.zeros((*gt.shape, 3), dtype=np.float64)
    rgb[..., 2] = np.where(gt > 0, 200, 15) + np.where(speck_mask(), 200, 0)
    rgb[..., 1] = 10
    img = noisy(rgb)
    img[..., 0] = 0
    assert_all_found(gt, segment_image(img))


def test_brightfield_stained_discs_on_light_background() -> None:
    gt = disc_labels()
    rgb = np.full((*gt.shape, 3), 235.0)
    rgb[gt > 0] = (120, 60, 160)  # purple
    rgb[speck_mask()] = (120, 60, 160)
    assert_all_found(gt, segment_image(noisy(rgb)))


def test_grey_discs_darker_than_background() -> None:
    gt = disc_labels()
    gray = np.where(gt > 0, 70.0, 150.0)
    assert_all_found(gt, segment_image(noisy(gray)[..., None]))


def test_touching_discs_are_split_and_small_objects_removed() -> None:
    gt = disc_labels()
    mask = (gt > 0) | speck_mask()
    labels = split_touching(foreground_mask(mask.astype(np.float32)))
    assert labels.max() == len(DISCS)
    assert labels[SPECK[0]] == 0
    assert labels[40, 40] != labels[40, 65]
    merged = split_touching(foreground_mask(mask.astype(np.float32)), BaselineConfig(min_distance=40))
    assert merged[40, 40] == merged[40, 65]  # seeds further apart than the discs: no split


def test_blank_image_gives_no_cells() -> None:
    assert segment_rgb(np.full((64, 64, 3), 128, np.uint8)).max() == 0


def test_command_writes_challenge_label_files(tmp_path: Path) -> None:
    from benchmarks.baseline import segment_folder

    gt = disc_labels()
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "cell_00001.tif", noisy(np.where(gt > 0, 60.0, 200.0)))
    written = segment_folder(inputs, tmp_path / "out")
    assert [p.name for p in written] == ["cell_00001_label.tiff"]
    assert_all_found(gt, read_labels(written[0]))
