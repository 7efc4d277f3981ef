"""benchmarks/restain.py: stained images re-stained with their labels unchanged, the same copies for the same
seed, grey images left out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.color import hed_from_rgb

from app.normalize import to_rgb
from app.reader import read_image
from benchmarks import restain


def stained_folder(folder: Path) -> Path:
    """Two H&E-like colour images (purple nuclei on pink) and one grey image, each with labels."""
    rng = np.random.default_rng(1)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    yy, xx = np.mgrid[:64, :80]
    for index, name in enumerate(["a", "b", "grey"]):
        labels = np.zeros((64, 80), np.uint16)
        labels[(yy - 20 - 10 * index) ** 2 + (xx - 30) ** 2 < 100] = 1
        labels[(yy - 40) ** 2 + (xx - 60) ** 2 < 64] = 2
        image = np.empty((64, 80, 3), np.uint8)
        image[...] = (235, 200, 220)  # eosin-pink background
        image[labels > 0] = (110, 60, 160)  # haematoxylin-purple nuclei
        image = np.clip(image + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
        if name == "grey":
            image[...] = image[..., :1]
        Image.fromarray(image).save(folder / "images" / f"{name}.png")
        tifffile.imwrite(folder / "labels" / f"{name}_label.tiff", labels)
    return folder


def stain_densities(image: np.ndarray) -> np.ndarray:
    """Mean haematoxylin, eosin and DAB optical density of an RGB uint8 image."""
    density = -np.log(np.clip(image.reshape(-1, 3) / 255.0, 1 / 255.0, 1.0))
    return (density @ hed_from_rgb).mean(0)


def test_copies_keep_labels_change_stains_and_repeat_with_the_seed(tmp_path: Path) -> None:
    data = stained_folder(tmp_path / "data")
    runs = []
    for run in ("one", "two"):
        assert restain.main(["--data", str(data), "--out", str(tmp_path / run), "--strength", "0.25",
                             "--copies", "3", "--seed", "7"]) == 0
        runs.append(sorted((tmp_path / run / "images").iterdir()))
    names = [p.name for p in runs[0]]
    assert names == [f"{stem}_s{c}.png" for stem in ("a", "b") for c in range(3)]  # the grey image left out
    for first, second in zip(*runs):
        assert np.array_equal(read_image(first, 10**9), read_image(second, 10**9))  # same seed, same copy
    for path in runs[0]:
        stem = path.stem.rsplit("_s", 1)[0]
        label = tifffile.imread(tmp_path / "one" / "labels" / f"{path.stem}_label.tiff")
        assert np.array_equal(label, tifffile.imread(data / "labels" / f"{stem}_label.tiff"))
        original = to_rgb(read_image(data / "images" / f"{stem}.png", 10**9))
        copy = read_image(path, 10**9)
        assert copy.shape == original.shape and copy.dtype == np.uint8
        change = np.abs(stain_densities(copy) - stain_densities(original))
        assert change.max() > 0.02  # the stains moved
    copies = [read_image(p, 10**9) for p in runs[0][:3]]
    assert not np.array_equal(copies[0], copies[1]) and not np.array_equal(copies[1], copies[2])


def test_strength_zero_gives_the_image_back_and_bad_arguments_are_refused(tmp_path: Path) -> None:
    data = stained_folder(tmp_path / "data")
    assert restain.main(["--data", str(data), "--out", str(tmp_path / "same"), "--strength", "0", "--copies", "1"]) == 0
    for stem in ("a", "b"):
        copy = read_image(tmp_path / "same" / "images" / f"{stem}_s0.png", 10**9).astype(int)
        original = to_rgb(read_image(data / "images" / f"{stem}.png", 10**9)).astype(int)
        assert np.abs(copy - original).max() <= 1  # HED and back, rounded to 8 bits
    with pytest.raises(SystemExit):
        restain.main(["--data", str(data), "--out", str(tmp_path / "same")])  # not empty
    with pytest.raises(SystemExit):
        restain.main(["--data", str(data), "--out", str(tmp_path / "x"), "--strength", "1.5"])
