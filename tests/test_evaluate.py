"""`python -m app evaluate`: per-image table, CSV, mean F1 as the last line."""

from __future__ import annotations

import csv

import numpy as np
import tifffile
from click.testing import CliRunner

from app.cli import cli


def _write(path, labels) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.asarray(labels, np.uint16), compression="zlib")


def _two_cells() -> np.ndarray:
    labels = np.zeros((40, 40), np.uint16)
    labels[5:15, 5:15] = 1
    labels[20:30, 20:30] = 2
    return labels


def test_evaluate_prints_table_and_mean_last(tmp_path) -> None:
    gt = _two_cells()
    _write(tmp_path / "gt" / "a_label.tiff", gt)
    _write(tmp_path / "gt" / "b_label.tiff", gt)
    _write(tmp_path / "gt" / "c_label.tiff", gt)
    _write(tmp_path / "pred" / "a_label.tiff", gt)  # perfect
    _write(tmp_path / "pred" / "b_label.tiff", gt == 1)  # tp 1, fn 1 -> F1 2/3
    out_csv = tmp_path / "scores.csv"
    result = CliRunner().invoke(
        cli, ["evaluate", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "--csv", str(out_csv)]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1] == "mean F1: 0.5556 over 3 images"
    assert any(line.startswith("c_label.tiff") and "missing prediction" in line for line in lines)
    assert "1 of 3 predictions missing" in result.output
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["image"] for r in rows] == ["a_label.tiff", "b_label.tiff", "c_label.tiff"]
    assert [r["f1"] for r in rows] == ["1.0000", "0.6667", "0.0000"]
    assert (rows[1]["tp"], rows[1]["fp"], rows[1]["fn"]) == ("1", "0", "1")


def test_evaluate_fails_clearly(tmp_path) -> None:
    runner = CliRunner()
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    empty = runner.invoke(cli, ["evaluate", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")])
    assert empty.exit_code != 0 and "no *_label.tiff" in empty.output
    _write(tmp_path / "gt" / "x_label.tiff", _two_cells())
    (tmp_path / "pred" / "x_label.tiff").write_bytes(b"not a tiff")
    bad = runner.invoke(cli, ["evaluate", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")])
    assert bad.exit_code != 0
    assert "x_label.tiff: cannot read label map" in bad.output
    missing = runner.invoke(cli, ["evaluate", "--gt", str(tmp_path / "nope"), "--pred", str(tmp_path / "pred")])
    assert missing.exit_code != 0
