"""benchmarks/slide.py on small slides: the generated scene and files, the tiled F1, and one run of main."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from app.slides.source import Slide
from benchmarks import slide as bench
from tests.onnx_models import contract_model


def test_scene_patches_hold_separate_nuclei_of_known_labels(tmp_path: Path) -> None:
    scene = bench.make_scene(4400, 0.05, patch=600)
    assert len(scene.patches) == round(0.05 * 4400**2 / 600**2)
    assert len(scene.cells) == len(scene.patches) * 15 * 15  # a 40-px grid in each 600-px patch
    image_path, truth_path = tmp_path / "s.tif", tmp_path / "s_label.tiff"
    bench.write_slide(scene, image_path, truth_path)
    truth = tifffile.imread(truth_path)
    assert truth.dtype == np.uint32 and np.array_equal(np.unique(truth), np.arange(len(scene.cells) + 1))
    with Slide(image_path) as slide:
        assert slide.level_shapes == [(4400, 4400), (1100, 1100)]  # a level each quarter, down to 1024 px
        image = slide.read(0, 4400, 0, 4400)
    glass = np.all(image == bench.GLASS, axis=2)
    assert glass.mean() > 0.8 and not glass[truth > 0].any()  # mostly glass, nuclei never glass
    assert (image[truth > 0].mean(axis=0) < image[(truth == 0) & ~glass].mean(axis=0)).all()  # darker nuclei
    tp, fp, fn = bench.tiled_f1(truth_path, truth_path)
    mosaic = bench.make_scene(2000, 1.0, patch=600)  # a share of 1: patches on a grid over the whole slide
    assert mosaic.patches.tolist() == [[y, x] for y in (40, 680, 1320) for x in (40, 680, 1320)]
    assert tp > 0.9 * len(scene.cells) and fp == fn == 0  # (cells on the 2000-px evaluation seams are not counted)


def test_main_runs_predict_and_prints_a_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = contract_model(tmp_path / "tiny.onnx")
    assert bench.main(["--sizes", "0.01", "--model", str(model), "--workdir", str(tmp_path),
                       "--app-args", "--budget none --scale-mode fixed --threads 1 --slide-threads 1"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| 0.01 | 3162 | streamed |"))
    assert row.count("|") == 15
    assert not list(tmp_path.glob("slide_3162/*/*.tif*"))  # slides and labels removed without --keep
