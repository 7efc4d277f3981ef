"""benchmarks/training.py end to end on a few generated images with a tiny network."""

from __future__ import annotations

import re

from benchmarks import training as bench


def test_table_compares_the_previous_and_the_adopted_setting(capsys) -> None:
    code = bench.main(["--synthetic", "3", "--init-onnx", "none", "--steps", "2", "--untimed", "1", "--curve", "4",
                       "--only", "pair", "--threads", "1", "--set", "augment.crop=64",
                       "--set", "model.decoder_channels=[8, 8, 8, 8, 8]"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [line for line in lines if line.startswith("| ") and "setting" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["previous: fp32, NCHW, data in the loop",
                                                           "adopted (preset)"]
    assert rows[0].split("|")[4].strip() == "1.00x"
    assert all(float(row.split("|")[5]) > 0 for row in rows)  # a finite mean loss for each curve
    assert re.fullmatch(r"speedup \d+\.\d\d", lines[-1])


def test_the_adopted_setting_is_the_long_presets() -> None:
    from training.config import load_config

    adopted = bench.adopted_setting(load_config("long"))
    assert adopted["runtime.cpu_bf16"] and adopted["runtime.channels_last"]
    assert bench.settings(adopted)["previous: fp32, NCHW, data in the loop"] == bench.PREVIOUS
