"""`python -m app predict` and predict.sh end to end on a tiny ONNX model of the model contract."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from app.cli import cli, default_model
from app.config import InferenceConfig
from tests.onnx_models import contract_model, disc_image

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "predict.sh"
SHAPE = (120, 150)
CENTRES = [(35, 35), (40, 110), (90, 70)]
FAST = ["--mode", "accurate", "--budget", "none", "--threads", "1", "--batch-size", "2"]  # the full plan


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return contract_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    iio.imwrite(src / "cell_00001.png", disc_image(SHAPE, CENTRES, 13))
    (src / "cell_00002.tif").write_bytes(b"")
    (src / "readme.md").write_text("x")
    return src


def _count(path: Path) -> int:
    return len(np.unique(tifffile.imread(path))) - 1


def test_predict_writes_labels_reports_bad_files_and_exits_non_zero(tmp_path: Path, inputs: Path, model: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        ["predict", "--input", str(inputs), "--output", str(out), "--model", str(model),
         "--report", str(out / "timing.csv"), "--device", "cpu", *FAST],
    )
    assert result.exit_code == 1, result.output
    assert _count(out / "cell_00001_label.tiff") == len(CENTRES)
    assert "FAILED cell_00002.tif: empty file (0 bytes)" in result.stderr
    assert "skipped readme.md" in result.stderr
    assert "cell_00001.png  120x150" in result.stdout and "penalised" in result.stdout
    assert (out / "timing.csv").read_text().count("\n") == 3
    assert sorted(p.name for p in out.iterdir()) == ["cell_00001_label.tiff", "timing.csv"]


def test_every_config_field_is_an_option() -> None:
    options = {opt for param in cli.commands["predict"].params for opt in param.opts}
    for field in fields(InferenceConfig):
        assert f"--{field.name.replace('_', '-')}" in options, field.name
    assert {"--input", "--output", "--model", "--report", "--overlay", "--rois", "--geojson", "--measure"} <= options


def test_options_override_the_config(tmp_path: Path, inputs: Path, model: Path) -> None:
    """--scales takes a comma list; --min-seed-area above the disc area leaves every label map empty."""
    (inputs / "cell_00002.tif").unlink()
    out = tmp_path / "out"
    args = ["predict", "--input", str(inputs), "--output", str(out), "--model", str(model), *FAST]
    fixed = ["--scale-mode", "fixed", "--fluorescence-grey-median", "0"]  # MT2's scales for these grey discs
    result = CliRunner().invoke(cli, [*args, *fixed, "--scales", "1,1.25", "--report", str(out / "r.csv")])
    assert result.exit_code == 0, result.output
    assert ",1/1.25,256,1," in (out / "r.csv").read_text()
    result = CliRunner().invoke(cli, [*args, *fixed, "--flips", "2", "--fusion", "mean",
                                      "--report", str(out / "r.csv")])
    assert result.exit_code == 0, result.output
    assert ",0.8/1/1.2,256,2," in (out / "r.csv").read_text() and "x2 views" in result.output
    result = CliRunner().invoke(cli, [*args, "--min-seed-area", "100000"])
    assert result.exit_code == 0, result.output
    assert not tifffile.imread(out / "cell_00001_label.tiff").any()
    result = CliRunner().invoke(cli, [*args, "--scales", "big"])
    assert result.exit_code == 2 and "comma-separated list of numbers" in result.output


def test_extra_options_write_their_files(tmp_path: Path, inputs: Path, model: Path) -> None:
    (inputs / "cell_00002.tif").unlink()
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli, ["predict", "--input", str(inputs), "--output", str(out), "--model", str(model), *FAST,
              "--overlay", "--rois", "--geojson", "--measure", "--overlay-max-side", "100"],
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "cell_00001.geojson", "cell_00001_cells.csv", "cell_00001_label.tiff", "cell_00001_overlay.png",
        "cell_00001_rois.zip",
    ]
    assert iio.imread(out / "cell_00001_overlay.png").shape == (60, 75, 3)  # 120 x 150 drawn at step 2
    assert "(median area" in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "{tmp}/missing"], "error: input folder"),
        (["--output", "{tmp}/a_file"], "error: output folder"),
        (["--model", "{tmp}/missing.onnx"], "error: "),
        (["--device", "gpu"], "device must be one of"),
        (["--budget", "soon"], "budget must be"),
        (["--flips", "3"], "flips must be one of 1, 2, 4"),
        (["--fusion", "median"], "fusion must be one of max, mean"),
    ],
)
def test_setup_errors_are_one_line_and_exit_2(tmp_path: Path, inputs: Path, model: Path, args, message) -> None:
    (tmp_path / "a_file").write_text("x")
    base = {"--input": str(inputs), "--output": str(tmp_path / "out"), "--model": str(model), "--device": "cpu"}
    for key, value in zip(args[::2], args[1::2]):
        base[key] = value.format(tmp=tmp_path)
    argv = ["predict", *[x for kv in base.items() for x in kv], "--threads", "1"]
    if "--budget" not in base:
        argv += ["--budget", "none"]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.output


def test_default_model_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MT2_WEIGHTS", raising=False)
    assert Path(default_model()) == REPO / "weights"
    monkeypatch.setenv("MT2_WEIGHTS", "elsewhere/mt2.onnx")
    assert default_model() == "elsewhere/mt2.onnx"


# --- predict.sh --------------------------------------------------------------------------------------------------


def _script_env(model: Path, inputs: Path, out: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(INPUT=str(inputs), OUTPUT=str(out), PYTHON=sys.executable, MT2_WEIGHTS=str(model), **extra)
    return env


def test_predict_sh_is_posix_and_executable() -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/bin/sh\n")
    for shell in ("sh", "dash"):
        if shutil.which(shell):
            subprocess.run([shell, "-n", str(SCRIPT)], check=True)


@pytest.mark.slow
@pytest.mark.parametrize("shell", ["sh", "dash"])
def test_sh_predict_sh_from_its_folder(tmp_path: Path, inputs: Path, model: Path, shell: str) -> None:
    if not shutil.which(shell):
        pytest.fail(f"{shell} is not installed; the test needs a POSIX shell of that name")
    out = tmp_path / "out"
    done = subprocess.run(
        [shell, "predict.sh", "--device", "cpu", *FAST], cwd=REPO, env=_script_env(model, inputs, out),
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1, done.stderr  # the zero-byte file fails; the good image is written
    assert _count(out / "cell_00001_label.tiff") == len(CENTRES)
    assert "cell_00002.tif: empty file" in done.stderr


@pytest.mark.slow
def test_predict_sh_on_path_through_a_symlink(tmp_path: Path, inputs: Path, model: Path) -> None:
    (inputs / "cell_00002.tif").unlink()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "predict.sh").symlink_to(SCRIPT)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    out = tmp_path / "out"
    env = _script_env(model, inputs, out)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    done = subprocess.run(
        ["predict.sh", *FAST], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert _count(out / "cell_00001_label.tiff") == len(CENTRES)


def test_the_package_installs_the_mt2_command() -> None:
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "mt2"
    assert script.is_file(), "the package is not installed in this environment (make test installs it)"
    done = subprocess.run([str(script), "predict", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--scale-mode" in done.stdout
