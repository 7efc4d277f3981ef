"""benchmarks/curve.py: CPU hours from a run's log, and one checkpoint scored into the curve end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from app.manifest import store_postprocess, write_manifest
from benchmarks import curve
from tests.onnx_models import contract_model, labelled_disc_folder
from tests.training_data import tiny_config, write_dataset
from training.trainer import train

torch.set_num_threads(1)


def test_cpu_hours_add_each_epochs_steps_at_its_rate(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    log.write_text("epoch,step,cpu_sec_per_step\n0,0,\n1,100,1.8\n2,200,3.6\n")
    assert curve.cpu_hours(log, 200) == pytest.approx((100 * 1.8 + 100 * 3.6) / 3600)
    assert curve.cpu_hours(log, 250) == pytest.approx((100 * 1.8 + 150 * 3.6) / 3600)  # latest rate beyond
    assert curve.cpu_hours(log, 50) == pytest.approx(50 * 1.8 / 3600)
    assert curve.cpu_hours(tmp_path / "none.csv", 10) == 0.0


def test_a_checkpoint_is_scored_and_appended_to_the_curve(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    train(tiny_config(**{"teacher.warmup_epochs": 0}), write_dataset(tmp_path / "d"), run, stop_at=2)
    reference = tmp_path / "weights"
    contract_model(reference / "mt2.fp32.onnx")
    write_manifest(reference, ["mt2.fp32.onnx"], {})
    store_postprocess(reference, {"min_seed_area": 8, "cell_threshold": 0.2}, "test")
    folder = labelled_disc_folder(tmp_path / "lab", 2, (96, 96), [(30, 30), (60, 64)], 9)
    args = ["--run", str(run), "--folders", str(folder), "--reference", str(reference), "--score-reference"]
    assert curve.main(args) == 0
    assert curve.main(args) == 0  # the same step again replaces its row; the reference is scored once
    rows = list(csv.DictReader(open(run / curve.CURVE)))
    assert [r["step"] for r in rows] == [curve.REFERENCE, "2"]
    assert float(rows[0]["lab"]) == pytest.approx(1.0)  # the disc model finds both discs
    assert 0.0 <= float(rows[1]["all"]) <= 1.0 and float(rows[1]["cpu_hours"]) >= 0.0
    assert (run / "curve_model" / "manifest.json").read_text().count('"min_seed_area": 8') == 1
    out = capsys.readouterr().out
    assert "| step | CPU hours | lab | all |" in out and "| reference |" in out


def test_paired_difference_uses_the_images_both_rows_scored() -> None:
    old = [("a", "1", 0.5), ("a", "2", 0.7), ("b", "3", 0.9)]
    new = [("a", "1", 0.6), ("a", "2", 0.7), ("b", "3", 0.8), ("b", "4", 1.0)]
    diffs = curve.paired_difference(new, old)
    assert list(diffs) == ["a", "b", curve.ALL]
    assert diffs["a"][0] == pytest.approx(0.05) and diffs["a"][1] == pytest.approx(0.05) and diffs["a"][2] == 2
    assert diffs["b"] == (pytest.approx(-0.1), 0.0, 1)  # image 4 has no earlier score
    mean, se, n = diffs[curve.ALL]
    # differences 0.1, 0, -0.1: sample sd 0.1
    assert (mean, n) == (pytest.approx(0.0), 3) and se == pytest.approx(0.1 / 3 ** 0.5)
    assert curve.mean_scores(new) == {"a": pytest.approx(0.65), "b": pytest.approx(0.9), "all": pytest.approx(0.775)}


def test_an_exported_model_is_scored_as_a_named_row_and_compared_image_by_image(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    folder = labelled_disc_folder(tmp_path / "lab", 2, (96, 96), [(30, 30), (60, 64)], 9)
    good, reference = tmp_path / "good", tmp_path / "weights"
    for model in (good, reference):
        contract_model(model / "mt2.fp32.onnx")
        write_manifest(model, ["mt2.fp32.onnx"], {})
    store_postprocess(reference, {"min_seed_area": 8, "cell_threshold": 0.2}, "test")
    base = ["--run", str(run), "--folders", str(folder), "--reference", str(reference)]
    assert curve.main(base + ["--model", str(good), "--label", "good", "--score-reference"]) == 0
    out = capsys.readouterr().out
    assert "good against reference, paired by image" in out and "all +0.0000 ± 0.0000 (n=2)" in out
    assert "min_seed_area" not in (good / "manifest.json").read_text()  # the model folder itself is untouched
    scored = curve.read_images(run / curve.IMAGES)
    assert sorted(scored) == ["good", curve.REFERENCE] and len(scored["good"]) == 2
    assert [r["step"] for r in sorted(curve.read_curve(run / curve.CURVE), key=curve.row_order)] == [
        curve.REFERENCE, "good"]
    with pytest.raises(SystemExit):
        curve.main(base + ["--model", str(good), "--label", "123"])  # a label that looks like a step
    with pytest.raises(SystemExit):
        curve.main(base + ["--model", str(good)])  # --model without --label


def test_per_image_scores_round_trip_names_with_commas(tmp_path: Path) -> None:
    rows = {"reference": [("lab", "a,b.tif", 0.5)], "12": [("lab", "a,b.tif", 0.75), ("tune", "c", 1.0)]}
    curve.write_images(tmp_path / curve.IMAGES, rows)
    assert curve.read_images(tmp_path / curve.IMAGES) == rows
