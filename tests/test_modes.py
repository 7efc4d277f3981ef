"""Planner modes (app/modes.py): the fields each sets, the default per entry point, and the order of precedence
defaults < manifest < mode < command line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from click.testing import CliRunner

from app.cli import cli
from app.config import InferenceConfig
from app.manifest import store_postprocess, write_manifest
from app.modes import DEFAULT_MODE, MODES, Mode, describe_mode, merge_classes, mode_classes, mode_config, without_given
from app.pipeline import read_report
from tests.onnx_models import contract_model, disc_image

REPO = Path(__file__).resolve().parent.parent
TUNED = {"flips": 4, "fusion": "mean", "cell_threshold": 0.2, "seed_threshold": 0.5, "min_seed_area": 8,
         "seed_split_height": 0.0, "min_area_ratio": 0.0}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights folder whose manifest asks for 4 views and its own thresholds, as the shipped one does."""
    folder = tmp_path_factory.mktemp("weights")
    contract_model(folder / "mt2.fp32.onnx")
    write_manifest(folder, ["mt2.fp32.onnx"], {"note": "test weights"})
    store_postprocess(folder, TUNED, "test")
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("in")
    iio.imwrite(folder / "cell_00001.png", disc_image((120, 150), [(35, 35), (40, 110), (90, 70)], 13))
    return folder


def report_row(tmp: Path, images: Path, weights: Path, *args: str) -> tuple[dict[str, str], str]:
    """Run `app predict` with `args`; (the report's row for the image, stdout)."""
    report = tmp / "r.csv"
    result = CliRunner().invoke(cli, ["predict", "--input", str(images), "--output", str(tmp / "out"), "--model",
                                      str(weights), "--device", "cpu", "--threads", "1", "--report", str(report),
                                      *args])
    assert result.exit_code == 0, result.output + result.stderr
    return read_report(report)[0], result.stdout


def test_each_mode_sets_plan_fields_only() -> None:
    plan_fields = {"budget", "flips", "adaptive_spread", "scales", "one_pass_max_side"}
    for name, mode in MODES.items():
        assert set(mode.settings) <= plan_fields, name
        cfg = mode_config(InferenceConfig(), name)
        assert all(getattr(cfg, k) == v for k, v in mode.settings.items())
    fast = mode_config(InferenceConfig(), "fast")
    assert (fast.flips, fast.adaptive_spread, fast.budget) == (2, (1.0,), "none")
    assert mode_classes("fast") == {"grey": {"adaptive_spread": (0.8, 1.0, 1.2)}, "stained": {"flips": 4}}
    assert mode_classes("fast", given={"adaptive_spread", "flips"}) == {}  # an option given wins for every kind
    assert mode_classes("accurate") == {} and mode_classes("challenge") == {}
    with pytest.raises(ValueError, match="grey may set only flips, adaptive_spread, scales"):
        Mode("odd", "", classes={"grey": {"cell_threshold": 0.5}})
    assert mode_config(InferenceConfig(), "challenge").budget == "auto"
    assert mode_config(InferenceConfig(flips=4), "accurate").flips == 4  # the tuned views stay
    with pytest.raises(ValueError, match="mode must be one of fast, accurate, challenge"):
        mode_config(InferenceConfig(), "quick")
    assert DEFAULT_MODE == "fast" and describe_mode("fast").startswith("mode fast: two views")


def test_merge_classes_joins_the_manifest_and_the_mode() -> None:
    tuned = {"grey": {"min_seed_area": 8}, "stained": {"cell_threshold": 0.2}}
    merged = merge_classes(without_given(tuned, {"cell_threshold"}), mode_classes("fast"))
    assert merged == {"grey": {"min_seed_area": 8, "adaptive_spread": (0.8, 1.0, 1.2)}, "stained": {"flips": 4}}


def test_the_default_is_fast_and_keeps_the_manifest_thresholds(tmp_path: Path, images: Path, weights: Path) -> None:
    row, out = report_row(tmp_path, images, weights)
    assert "mode fast:" in out
    assert row["flips"] == "2" and "/" not in row["scales"]  # two views, one scale although the manifest has 4
    assert "T_cell 0.2 T_seed 0.5 S_min 8" in out  # the manifest's post-processing still applies
    assert row["plan"].startswith("budget none"), "fast mode has no time budget"


def test_accurate_and_challenge_keep_the_tuned_views(tmp_path: Path, images: Path, weights: Path) -> None:
    row, out = report_row(tmp_path, images, weights, "--mode", "accurate")
    assert "mode accurate:" in out and row["flips"] == "4" and row["scales"].count("/") == 2
    row, out = report_row(tmp_path, images, weights, "--mode", "challenge")
    assert "mode challenge:" in out and " s budget" in row["plan"]  # the tolerance, less start-up and the probe


def test_options_given_win_over_the_mode(tmp_path: Path, images: Path, weights: Path) -> None:
    row, _ = report_row(tmp_path, images, weights, "--mode", "fast", "--flips", "1", "--adaptive-spread", "0.8,1.2")
    assert row["flips"] == "1" and row["scales"].count("/") == 1
    row, _ = report_row(tmp_path, images, weights, "--mode", "accurate", "--budget", "30")
    given = re.search(r"of the ([0-9.]+) s budget$", row["plan"])  # 30 s less what the diameter looks took
    assert given and 25.0 <= float(given.group(1)) <= 30.0


def test_an_unknown_mode_is_a_usage_error(tmp_path: Path, images: Path, weights: Path) -> None:
    result = CliRunner().invoke(cli, ["predict", "--input", str(images), "--output", str(tmp_path / "o"),
                                      "--model", str(weights), "--mode", "quick"])
    assert result.exit_code == 2 and "'quick' is not one of 'fast', 'accurate', 'challenge'" in result.output


def test_predict_sh_runs_the_challenge_mode(tmp_path: Path, images: Path, weights: Path) -> None:
    env = {**os.environ, "INPUT": str(images), "OUTPUT": str(tmp_path / "out"), "MT2_WEIGHTS": str(weights),
           "PYTHON": sys.executable}
    done = subprocess.run(["sh", str(REPO / "predict.sh"), "--device", "cpu", "--threads", "1"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "mode challenge:" in done.stdout and "x4 views" in done.stdout


def test_fast_mode_gives_grey_images_three_scales_and_stained_images_four_views(
    tmp_path: Path, images: Path, weights: Path,
) -> None:
    """Dark discs on a light grey field are a grey image (neither stained colour nor fluorescence): three adaptive
    scales in fast mode, against one for the fluorescence-like discs of `images`; purple discs on pink (three
    different channels) are a stained image: four views at one scale."""
    folder = tmp_path / "grey"
    folder.mkdir()
    iio.imwrite(folder / "cell_00002.png", 255 - disc_image((120, 150), [(35, 35), (40, 110), (90, 70)], 13))
    row, out = report_row(tmp_path, folder, weights, "--diameter", "26")  # adaptive scales around 30 / 26
    assert row["image_class"] == "grey" and row["scales"].count("/") == 2 and row["flips"] == "2"
    assert "grey images adaptive_spread 0.8/1/1.2" in out
    row, _ = report_row(tmp_path, images, weights, "--diameter", "26")
    assert row["image_class"] == "fluorescence" and "/" not in row["scales"] and row["flips"] == "2"
    stained = tmp_path / "stained"
    stained.mkdir()
    discs = disc_image((120, 150), [(35, 35), (40, 110), (90, 70)], 13).astype(float) / 255
    pink, purple = np.array([235, 170, 200]), np.array([90, 40, 140])
    rgb = (pink * (1 - discs[..., None]) + purple * discs[..., None]).astype(np.uint8)
    iio.imwrite(stained / "cell_00003.png", rgb)
    row, out = report_row(tmp_path, stained, weights, "--diameter", "26")
    assert row["image_class"] == "stained" and "/" not in row["scales"] and row["flips"] == "4"
    assert "stained images flips 4" in out
