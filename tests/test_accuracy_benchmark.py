"""benchmarks/accuracy.py end to end at a toy size: every method, tuning included, gives a scored table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.config import MANIFEST_FIELDS
from benchmarks import accuracy


@pytest.mark.slow
def test_all_methods_on_a_toy_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--methods", "model,baseline,mt,supervised", "--images", "4", "--size", "128", "160",
            "--train-images", "12", "--train-size", "128", "160", "--labelled-fraction", "0.5",
            "--max-steps", "3", "--tune-images", "2", "--threads", "1", "--work", str(tmp_path),
            "--markdown", str(tmp_path / "table.md")]
    assert accuracy.main(argv) == 0
    text = (tmp_path / "table.md").read_text()
    header = "| modality | images | shipped model | classical baseline | Mean Teacher @50% | supervised-only @50% |"
    assert header in text
    assert "| **overall** | 4 |" in text
    assert "Mean Teacher minus supervised-only, overall F1:" in text
    assert "views, fusion and thresholds tuned on 2 images (seed 3000)" in text
    assert "Shipped model settings: flips " in text
    for method in ("mt", "supervised"):  # each comparison model carries the settings `app tune` chose for it
        manifest = json.loads((tmp_path / f"run_{method}" / "onnx" / "manifest.json").read_text())
        assert set(manifest["postprocess"]) == {*MANIFEST_FIELDS, "tuned_on"}
        assert len(list((tmp_path / f"pred_{method}").glob("*_label.tiff"))) == 4


def test_seeds_must_differ() -> None:
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--methods", "baseline", "--tune-seed", str(accuracy.HELDOUT_SEED)])


def test_scores_labelled_folders_per_folder_and_overall(tmp_path: Path) -> None:
    from tests.training_data import write_dataset

    first = write_dataset(tmp_path / "lab_a", labelled=2, unlabelled=0, size=96, seed=5)
    second = write_dataset(tmp_path / "lab_b", labelled=1, unlabelled=0, size=96, seed=6)
    argv = ["--methods", "model,baseline", "--folders", str(first), str(second), "--threads", "1",
            "--budget", "none", "--work", str(tmp_path / "work"), "--markdown", str(tmp_path / "table.md")]
    assert accuracy.main(argv) == 0
    lines = (tmp_path / "table.md").read_text().splitlines()
    assert lines[0] == "| folder | images | shipped model | classical baseline |"
    rows = {line.split(" | ")[0].strip("| *"): line for line in lines[2:5]}
    assert set(rows) == {"lab_a", "lab_b", "overall"}
    assert rows["lab_a"].split(" | ")[1] == "2" and rows["overall"].split(" | ")[1] == "3"
    for line in rows.values():
        for cell in line.strip("|").split("|")[2:]:
            assert 0.0 <= float(cell.strip(" *")) <= 1.0
    assert len(list((tmp_path / "work" / "pred_model" / "0").glob("*_label.tiff"))) == 2
    assert len(list((tmp_path / "work" / "pred_baseline" / "1").glob("*_label.tiff"))) == 1


def test_folders_need_the_challenge_layout(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--methods", "baseline", "--folders", str(tmp_path)])
    with pytest.raises(SystemExit):
        accuracy.parse_args(["--methods", "mt", "--folders", str(tmp_path)])
