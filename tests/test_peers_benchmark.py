"""benchmarks/peers.py: the parts that run in the project's environment (table, the sides' JSON, the images and
our side at a tiny size). The peers' side needs build/peers-venv (`make peers-env`), which CI does not build: it
is not run here, and without that environment the benchmark stops with an error that says how to build it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from app.runner import INT8_FILE
from benchmarks import peers
from benchmarks.peers import Row
from tests.onnx_models import contract_model

CELLPOSE = "Cellpose 3 (cyto3 CPnet)"


def rows() -> list[Row]:
    return [
        Row(CELLPOSE, 1000, 1000, 8.0, 2.0, 6_600_845, "224-px tiles"),
        Row(peers.OURS_INT8, 500, 500, 0.5, None, 4_292_245),
        Row(peers.OURS_FP32, 1000, 1000, 2.0, 0.5, 4_292_245, "one pass"),
        Row(peers.OURS_FP32, 500, 500, 1.0, 0.25, 4_292_245),
    ]


def test_table_gives_seconds_per_megapixel_by_size_ours_first() -> None:
    lines = peers.table(rows()).splitlines()
    assert lines[0] == "| " + " | ".join(peers.TABLE_HEAD) + " |"
    body = [line.split(" | ") for line in lines[2:]]
    assert [cells[0].lstrip("| ") for cells in body] == [peers.OURS_FP32, peers.OURS_INT8, peers.OURS_FP32, CELLPOSE]
    assert body[0][1:6] == ["0.25", "500 x 500", "4.000", "1.000", "4.29 M"]
    assert body[1][3:5] == ["2.000", "="]  # int8 shares fp32's post-processing
    assert body[3][3:5] == ["8.000", "2.000"]


def test_header_names_the_cpus_threads_and_that_times_not_masks_are_compared() -> None:
    text = "\n".join(peers.header(2, 3, {"ours": {"onnxruntime-gpu": "1.0"}, "peers": {"cellpose": "3.1.1.2"}}))
    assert "times, not masks" in text and "untrained" in text
    assert f"{peers.os.cpu_count()} CPUs" in text and "2 threads per method" in text and "median of 3" in text
    assert "ours: onnxruntime-gpu 1.0" in text and "peers: cellpose 3.1.1.2" in text


def test_a_sides_json_round_trips_and_malformed_rows_are_refused() -> None:
    text = json.dumps({"versions": {"stardist": "0.9.2"}, "rows": [asdict(r) for r in rows()]})
    parsed, versions = peers.parse_side(text)
    assert parsed == rows() and versions == {"stardist": "0.9.2"}
    good = asdict(rows()[0])
    for broken in ({k: v for k, v in good.items() if k != "network_s"}, {**good, "height": "tall"},
                   {**good, "post_s": -1.0}, {**good, "width": 0}, ["not", "an", "object"]):
        with pytest.raises(ValueError):
            peers.parse_side(json.dumps({"rows": [broken]}))
    for not_a_side in ({"rows": "none"}, [], {"rows": [], "versions": []}):
        with pytest.raises(ValueError):
            peers.parse_side(json.dumps(not_a_side))


def test_repeating_a_patch_numbers_each_copys_cells_apart() -> None:
    labels = np.zeros((10, 10), np.int32)
    labels[1:4, 1:4], labels[6:9, 6:9] = 1, 2
    rgb = np.zeros((10, 10, 3), np.uint8)
    big_rgb, big = peers.repeat_to(rgb, labels, 15)
    assert big_rgb.shape == (15, 15, 3) and big.shape == (15, 15)
    # 2 x 2 copies of 2 cells; the crop removes the second cell of three copies: 5 cells, numbered 1..5
    assert set(np.unique(big)) == set(range(6))
    assert len(np.unique(big[10:, 10:])) == 2  # the last copy's first cell has a number of its own


def test_our_side_times_the_model_and_the_post_processing_at_a_tiny_size(tmp_path: Path) -> None:
    data = peers.scene(64)
    assert data["rgb"].shape == (64, 64, 3) and data["grey"].shape == (64, 64) and data["labels"].max() > 0
    assert data["cell"].shape == data["boundary"].shape == (64, 64)
    model = contract_model(tmp_path / "m.onnx")
    measured = peers.ours_rows([data], [(peers.OURS_FP32, model), (peers.OURS_INT8, model)], threads=1, repeats=1)
    fp32, int8 = measured
    assert (fp32.height, fp32.width) == (64, 64) and fp32.network_s > 0 and fp32.params > 0
    assert fp32.post_s is not None and fp32.post_s > 0 and "found" in fp32.note and "one pass" in fp32.note
    assert int8.method == peers.OURS_INT8 and int8.post_s is None


def test_int8_is_timed_only_when_the_weights_folder_holds_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        peers.ours_models(tmp_path)
    contract_model(tmp_path / "mt2.fp32.onnx")
    assert [name for name, _ in peers.ours_models(tmp_path)] == [peers.OURS_FP32]
    contract_model(tmp_path / INT8_FILE)
    assert [name for name, _ in peers.ours_models(tmp_path)] == [peers.OURS_FP32, peers.OURS_INT8]


def test_without_the_peers_environment_it_stops_and_says_how_to_build_it(monkeypatch, capsys) -> None:
    monkeypatch.setattr(peers, "PEERS_PYTHON", peers.ROOT / "build" / "no-such-venv" / "bin" / "python")
    assert peers.main(["--sizes", "0.01", "--repeats", "1"]) == 2
    assert "make peers-env" in capsys.readouterr().err


def test_children_get_the_thread_setting(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "16")
    env = peers.child_env(2)
    assert all(env[name] == "2" for name in peers.THREAD_VARIABLES)
