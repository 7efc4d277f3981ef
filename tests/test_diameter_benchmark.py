"""benchmarks/diameter.py end to end on two small labelled images with the tiny contract model."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import diameter
from tests.onnx_models import contract_model, labelled_disc_folder

CENTRES = [(40, 40), (40, 120), (120, 50), (125, 130), (80, 85)]


def test_table_compares_the_estimate_with_the_labels(tmp_path: Path) -> None:
    folder = labelled_disc_folder(tmp_path / "lab", 2, (176, 176), CENTRES, 12)
    model = contract_model(tmp_path / "m.onnx", level=0.2)
    out = tmp_path / "table.md"
    assert diameter.main(["--folders", str(folder), "--model", str(model), "--threads", "1", "--images", "0",
                          "--set", "estimate_scales=0.5,1,2", "--markdown", str(out)]) == 0
    rows = [line.strip("|").split("|") for line in out.read_text().splitlines() if line.startswith("| lab (2)")]
    assert [r[1].strip() for r in rows] == ["x0.5", "x1", "x2"]
    native, doubled = rows[1], rows[2]
    assert float(native[2]) == pytest.approx(24.0, rel=0.05)  # labelled: discs of radius 12
    assert float(native[3]) == pytest.approx(1.0, abs=0.15) and native[4].strip() == "100%"
    assert native[5].strip() == "n/a" and doubled[5].strip() == "100%"  # the estimate follows the resize
    assert int(native[6]) == 0 and 1 <= float(native[7]) <= 3
    assert "looks 0.5/1/2" in out.read_text()


def test_set_names_a_config_field() -> None:
    assert diameter.parse_override("estimate_scales=0.5,1") == ("estimate_scales", (0.5, 1))
    assert diameter.parse_override("target_diameter=20") == ("target_diameter", 20)
    with pytest.raises(SystemExit, match="no_such_field"):
        diameter.parse_override("no_such_field=1")
