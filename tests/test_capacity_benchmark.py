"""benchmarks/capacity.py end to end on a few generated images with two tiny candidates."""

from __future__ import annotations

import pytest

from benchmarks import capacity
from benchmarks.training import synthetic_folder


def test_candidates_are_read_as_encoder_and_decoder_channels() -> None:
    assert capacity.parse_candidate("resnet18 64,32,16,16,8") == {
        "model.encoder": "resnet18", "model.decoder_channels": [64, 32, 16, 16, 8]}
    assert capacity.parse_candidate("resnet34")["model.decoder_channels"] == [128, 64, 32, 16, 16]
    with pytest.raises(ValueError, match="ENCODER"):
        capacity.parse_candidate("resnet18 8,8 extra")


def test_table_measures_each_candidate_against_the_first(capsys) -> None:
    folder = synthetic_folder(3)
    code = capacity.main(["--data", str(folder), "--candidates", "mobilenet_v2 8,8,8,8,8", "resnet18 8,8,8,8,8",
                          "--steps", "1", "--untimed", "1", "--repeats", "1", "--window", "64", "--threads", "1",
                          "--set", "augment.crop=64", "--set", "data.cache_dir=''"])
    assert code == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and "candidate" not in line]
    assert [row[0].strip() for row in rows] == ["mobilenet_v2 8,8,8,8,8", "resnet18 8,8,8,8,8"]
    assert rows[0][3].strip() == "1.00x" and rows[0][6].strip() == "1.00x"
    assert float(rows[1][1]) > float(rows[0][1])  # resnet18 has more parameters than MobileNetV2
    assert all(float(row[column]) > 0 for row in rows for column in (2, 4, 5))
