"""The timing protocol's pure parts: the docker command, tolerances, the CSV and the summary.

A real run through the engine is in tests/test_container.py.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import tifffile

from app.config import InferenceConfig
from app.protocol import (
    CONTAINER_COMMAND,
    CSV_HEADER,
    DockerMissing,
    TimedRun,
    csv_text,
    docker_command,
    failure_detail,
    image_tolerance,
    run_line,
    run_protocol,
    summary,
    write_csv,
)


def _run(name: str = "cell_00001.png", seconds: float = 4.0, tol: float = 10.0, code: int = 0, found: bool = True,
         detail: str = "") -> TimedRun:
    return TimedRun(name, seconds, tol, code, found, detail)


def test_docker_command_is_the_organisers_run_with_extra_arguments_before_the_image(tmp_path: Path) -> None:
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    command = docker_command("mt2:latest", inputs, outputs, ["--gpus", "device=0"], name="mt2-timing-1")
    assert command[:4] == ["docker", "container", "run", "--rm"]
    assert command[-4:] == ["mt2:latest", *CONTAINER_COMMAND]
    assert CONTAINER_COMMAND == ("/bin/bash", "-c", "sh predict.sh")
    assert command[command.index("-m") + 1] == "28g"
    assert command[command.index("--name") + 1] == "mt2-timing-1"
    mounts = [command[i + 1] for i, arg in enumerate(command) if arg == "-v"]
    assert mounts == [f"{inputs.resolve()}/:/workspace/inputs/", f"{outputs.resolve()}/:/workspace/outputs/"]
    # Extra arguments come after the defaults (so a later -m wins) and before the image.
    assert command.index("-m") < command.index("--gpus") < command.index("mt2:latest")


def test_docker_command_makes_relative_folders_absolute(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    command = docker_command("mt2", "in", "out")
    mounts = [command[i + 1] for i, arg in enumerate(command) if arg == "-v"]
    assert mounts[0].startswith(f"{tmp_path.resolve()}/in/:")
    assert "--name" not in command


def test_penalised_time_is_the_part_above_the_tolerance() -> None:
    assert _run(seconds=12.5, tol=10.0).penalised == 2.5
    assert _run(seconds=3.0, tol=10.0).penalised == 0.0


def test_a_missing_label_file_or_an_error_exit_is_a_failure() -> None:
    assert not _run().failed and _run().reason == ""
    missing = _run(found=False, detail="error: no model")
    assert missing.failed and missing.reason == "no cell_00001_label.tiff: error: no model"
    crashed = _run(code=137, found=False)
    assert crashed.reason == "no cell_00001_label.tiff, exit code 137"
    assert _run(code=1).failed and _run(code=1).reason == "exit code 1"


def test_image_tolerance_follows_the_image_size(tmp_path: Path) -> None:
    cfg = InferenceConfig()
    small, large, broken = tmp_path / "small.tif", tmp_path / "large.tif", tmp_path / "broken.png"
    tifffile.imwrite(small, np.zeros((500, 600), np.uint8))
    tifffile.imwrite(large, np.zeros((1000, 2500), np.uint8))
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnothing")
    assert image_tolerance(small, cfg) == 10.0
    assert image_tolerance(large, cfg) == 25.0
    assert image_tolerance(broken, cfg) == 10.0


def test_csv_has_exactly_the_organisers_columns(tmp_path: Path) -> None:
    runs = [_run("a.png", 4.0), _run("b.tiff", 31.25, tol=25.0)]
    rows = list(csv.reader(io.StringIO(csv_text(runs))))
    assert rows[0] == ["Img Name", "Real Running Time", "Rank Running Time"] == list(CSV_HEADER)
    assert rows[1:] == [["a.png", "4.000", "0.000"], ["b.tiff", "31.250", "6.250"]]
    path = write_csv(tmp_path / "timing.csv", runs)
    assert path.read_text() == csv_text(runs)


def test_summary_totals_penalties_and_names_failures() -> None:
    runs = [_run("a.png", 4.0), _run("b.png", 12.0), _run("c.png", 1.0, code=1, found=False)]
    assert summary(runs) == "3 images: 17.00 s in all, 2.00 s penalised, 1 over tolerance, 1 failed (c.png)"
    assert summary(runs[:1]) == "1 images: 4.00 s in all, 0.00 s penalised, 0 over tolerance, 0 failed"


def test_run_line_shows_time_tolerance_and_failure() -> None:
    assert run_line(_run("a.png", 4.0)) == "a.png: 4.00 s (tolerance 10.0 s, penalised 0.00 s)"
    assert run_line(_run("c.png", 1.0, found=False)).endswith("FAILED no c_label.tiff")


def test_the_protocol_refuses_to_start_without_the_docker_client(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DockerMissing, match="docker is not on PATH"):
        run_protocol("mt2", tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failure_detail_prefers_the_line_about_the_image() -> None:
    output = "model on CPU\nFAILED broken.png: corrupt PNG header\n0 of 1 image(s) written; 1 failed\n"
    assert failure_detail(output, "broken.png") == "FAILED broken.png: corrupt PNG header"
    assert failure_detail("docker: Error response from daemon: no such image\n\n", "a.png") == (
        "docker: Error response from daemon: no such image"
    )
    assert failure_detail("", "a.png") == ""
