"""Streamed slides end to end through the pipeline, on tiled TIFFs made here and the tiny contract model: the
labels equal the in-memory whole-slide path's, glass is skipped, a cell on a tile corner is one cell, a crashed or
killed run resumes to the same labels, a two-worker local Dask cluster gives the threaded labels, the extras
stream, and a damaged slide is one line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from threading import Lock

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.segmentation import find_boundaries

from app import extras as whole_extras
from app.config import OVERLAY_PALETTE, InferenceConfig
from app.infer import Plan
from app.normalize import normalize, to_rgb
from app.pipeline import run_folder
from app.runner import ModelRunner
from app.segment import segment_tiled
from app.slides import schedule
from app.slides.record import record_paths
from app.slides.source import is_slide
from tests.log_capture import logged
from tests.onnx_models import contract_model
from tests.slide_data import SLIDE_CFG, TILED_CFG, disc_slide, write_tiled

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return contract_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray]:
    """A 900 x 800 slide: discs on the left, glass on the right, one disc centred on the core corner (256, 256)
    and one on the corner (512, 512)."""
    return disc_slide(900, 800, spacing=48, blank=((0, 900, 420, 800), (240, 272, 240, 272), (496, 528, 496, 528)),
                      extra=((256, 256, 12), (512, 512, 11)))


def predict(tmp: Path, image: np.ndarray, model: Path, cfg: InferenceConfig = SLIDE_CFG, *, name: str = "s",
            extras: tuple[str, ...] = (), levels: int = 0) -> tuple[int, Path, list[str]]:
    """Write `image` as a tiled TIFF into tmp/in, run the pipeline into tmp/out: (exit code, out folder, log)."""
    (tmp / "in").mkdir(parents=True, exist_ok=True)
    write_tiled(tmp / "in" / f"{name}.tif", image, levels=levels)
    with logged("app") as lines:
        code = run_folder(tmp / "in", tmp / "out", model, cfg, report=tmp / "out" / "report.csv", extras=extras)
    return code, tmp / "out", lines


def one_to_one(truth: np.ndarray, labels: np.ndarray) -> tuple[int, int, int]:
    """(overlapping pairs, truth ids among them, label ids among them): equal counts mean a bijection."""
    both = (truth > 0) & (labels > 0)
    base = int(labels.max()) + 1
    keys = np.unique(truth[both].astype(np.int64) * base + labels[both])
    return keys.size, np.unique(keys // base).size, np.unique(keys % base).size


def test_only_large_tiled_tiffs_are_streamed(tmp_path: Path) -> None:
    image = np.zeros((300, 200, 3), np.uint8)
    write_tiled(tmp_path / "tiled.tif", image)
    tifffile.imwrite(tmp_path / "strips.tif", image, photometric="rgb")
    assert is_slide(tmp_path / "tiled.tif", SLIDE_CFG)
    assert not is_slide(tmp_path / "strips.tif", SLIDE_CFG)  # untiled: read whole, as before
    assert not is_slide(tmp_path / "tiled.tif", InferenceConfig())  # below the default threshold (150 MP)


def test_streamed_labels_equal_the_in_memory_whole_slide_path(tmp_path: Path, model: Path,
                                                              scene: tuple[np.ndarray, np.ndarray]) -> None:
    image, truth = scene
    code, out, lines = predict(tmp_path, image, model, SLIDE_CFG.with_overrides(slide_tissue_contrast=0.0))
    assert code == 0
    labels = tifffile.imread(out / "s_label.tiff")
    runner = ModelRunner(model, "cpu", 1)
    expected = segment_tiled(normalize(to_rgb(image), TILED_CFG), runner, Plan((1.0,), 256), TILED_CFG)
    assert labels.dtype == np.uint16 and np.array_equal(labels, expected)
    assert one_to_one(truth, labels) == (truth.max(),) * 3  # every disc one label, none split or merged
    assert "(16/16 tiles)" in next(line for line in lines if line.startswith("s.tif "))
    assert sorted(p.name for p in out.iterdir()) == ["report.csv", "s_label.tiff"]  # record and parts gone


def test_glass_tiles_are_skipped_and_written_as_background(tmp_path: Path, model: Path,
                                                           scene: tuple[np.ndarray, np.ndarray]) -> None:
    image, truth = scene
    code, out, lines = predict(tmp_path, image, model)
    assert code == 0
    line = next(line for line in lines if line.startswith("s.tif "))
    # Right of column 424 there is only the disc on the corner (512, 512): of the tiles whose cores start at
    # column 512 or later, only the two beside that disc meet tissue; 6 of the 16 are never read nor segmented.
    assert "(10/16 tiles)" in line and f"{truth.max()} cells" in line
    labels = tifffile.imread(out / "s_label.tiff")
    assert not labels[:, 524:].any()
    assert one_to_one(truth, labels) == (truth.max(),) * 3
    report = (out / "report.csv").read_text().splitlines()
    assert report[0].split(",")[-2:] != ["tissue_share", "tiles"] and "tissue_share,tiles" in report[0]


def test_a_cell_across_a_tile_corner_gets_one_label(tmp_path: Path, model: Path,
                                                    scene: tuple[np.ndarray, np.ndarray]) -> None:
    image, truth = scene
    predict(tmp_path, image, model)
    labels = tifffile.imread(tmp_path / "out" / "s_label.tiff")
    for cy, cx in ((256, 256), (512, 512)):  # both corners of four cores
        ids = np.unique(labels[truth == truth[cy, cx]])
        assert ids.size == 1 and ids[0] > 0
        cell = labels == ids[0]
        assert (cell == (truth == truth[cy, cx])).mean() > 0.999  # the whole disc, nothing else


class CrashAfter:
    """Stands in for the tile task: runs the real one, counting calls, and fails once `limit` calls are done."""

    def __init__(self, limit: int | None) -> None:
        self.limit, self.calls, self.lock = limit, 0, Lock()

    def __call__(self, job):
        with self.lock:
            self.calls += 1
            if self.limit is not None and self.calls > self.limit:
                raise RuntimeError("simulated crash")
        return TILE_TASK(job)


TILE_TASK = schedule.segment_tile


def test_resume_after_a_crash_gives_identical_labels(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch,
                                                     scene: tuple[np.ndarray, np.ndarray]) -> None:
    image, _ = scene
    cfg = SLIDE_CFG.with_overrides(slide_tissue_contrast=0.0)
    predict(tmp_path / "whole", image, model, cfg)
    reference = tifffile.imread(tmp_path / "whole" / "out" / "s_label.tiff")
    crash = CrashAfter(5)
    monkeypatch.setattr(schedule, "segment_tile", crash)
    monkeypatch.setattr("app.slides.run.RECORD_SECONDS", 0.0)
    code, out, lines = predict(tmp_path / "crash", image, model, cfg)
    assert code == 1 and any(line.startswith("FAILED s.tif: RuntimeError: simulated crash") for line in lines)
    record, parts = record_paths(out / "s_label.tiff")
    done = json.loads(record.read_text())["done"]
    assert 3 <= len(done) < 16 and not (out / "s_label.tiff").exists()  # a tile in flight at the crash may be lost
    again = CrashAfter(None)
    monkeypatch.setattr(schedule, "segment_tile", again)
    with logged("app") as resumed:
        assert run_folder(out.parent / "in", out, model, cfg) == 0
    assert any("resuming from .s_label.tiff.progress.json" in line for line in resumed)
    assert again.calls == 16 - len(done)  # only the tiles not recorded
    assert np.array_equal(tifffile.imread(out / "s_label.tiff"), reference)
    assert not record.exists() and not parts.exists()


def cli_args(cfg: InferenceConfig) -> list[str]:
    """The options that give `cfg` on the command line (the fields that differ from the defaults)."""
    args: list[str] = []
    for name, value in vars(cfg).items():
        if value != getattr(InferenceConfig(), name):
            shown = ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else str(value)
            args += [f"--{name.replace('_', '-')}", shown]
    return args


# `python -m app predict ARGS` in a fresh interpreter that sends itself SIGKILL as its tile number `kill_at` starts
# (0: never): a real kill -9 of the real command, at a point that does not depend on how fast the machine is.
KILLED_AT_TILE = """
import os, signal, sys
from app.cli import cli
from app.slides import run, schedule
kill_at, real, calls = int(sys.argv[1]), schedule.segment_tile, []
def dying(job):
    calls.append(job)
    if len(calls) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(job)
schedule.segment_tile, run.RECORD_SECONDS = dying, 0.0  # every finished tile recorded at once
cli(sys.argv[2:], prog_name="app")
"""


def test_kill_9_then_resume_gives_identical_labels(tmp_path: Path, model: Path) -> None:
    image, _ = disc_slide(1700, 1700, spacing=36)
    cfg = SLIDE_CFG.with_overrides(slide_tile_size=128, slide_tile_halo=32, slide_threads=1)  # 196 tiles

    def command(folder: Path, kill_at: int) -> subprocess.CompletedProcess:
        args = ["predict", "--input", str(folder / "in"), "--output", str(folder / "out"), "--model", str(model),
                *cli_args(cfg)]
        return subprocess.run([sys.executable, "-c", KILLED_AT_TILE, str(kill_at), *args], cwd=REPO,
                              capture_output=True, text=True, timeout=300)

    for folder in (tmp_path / "whole", tmp_path / "killed"):
        (folder / "in").mkdir(parents=True)
        write_tiled(folder / "in" / "s.tif", image)
    assert command(tmp_path / "whole", 0).returncode == 0
    reference = tifffile.imread(tmp_path / "whole" / "out" / "s_label.tiff")
    folder = tmp_path / "killed"
    record, parts = record_paths(folder / "out" / "s_label.tiff")
    killed = command(folder, 60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    done = json.loads(record.read_text())["done"]
    assert 50 <= len(done) < 60  # the tiles finished before the kill, less any whose record was not yet written
    assert not (folder / "out" / "s_label.tiff").exists()
    resumed = command(folder, 0)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {record.name}, {len(done)} of 196 tissue tile(s) already done" in resumed.stdout
    assert np.array_equal(tifffile.imread(folder / "out" / "s_label.tiff"), reference)
    assert not record.exists() and not parts.exists()
    assert sorted(p.name for p in (folder / "out").iterdir()) == ["s_label.tiff"]  # no temporary file left


@pytest.mark.parametrize("how", ["--workers 2", "--scheduler ADDRESS"])
def test_a_two_worker_local_cluster_gives_the_threaded_labels(tmp_path: Path, model: Path, how: str,
                                                              scene: tuple[np.ndarray, np.ndarray]) -> None:
    from distributed import LocalCluster

    image, _ = scene
    predict(tmp_path / "threads", image, model)
    if how == "--workers 2":  # the run starts its own cluster of two worker processes
        code, out, lines = predict(tmp_path / "cluster", image, model, SLIDE_CFG.with_overrides(workers=2))
    else:  # a cluster that is already running, reached by its scheduler's address
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            cfg = SLIDE_CFG.with_overrides(scheduler=cluster.scheduler_address)
            code, out, lines = predict(tmp_path / "cluster", image, model, cfg)
    assert code == 0, lines
    assert np.array_equal(tifffile.imread(out / "s_label.tiff"),
                          tifffile.imread(tmp_path / "threads" / "out" / "s_label.tiff"))


def test_extras_stream_as_the_whole_image_extras_read_them(tmp_path: Path, model: Path,
                                                           scene: tuple[np.ndarray, np.ndarray]) -> None:
    image, _ = scene
    cfg = SLIDE_CFG.with_overrides(overlay_max_side=300)  # the 900 x 800 slide drawn every 3rd pixel
    code, out, lines = predict(tmp_path, image, model, cfg, extras=("overlay", "rois", "geojson", "measure"))
    assert code == 0, lines
    labels = tifffile.imread(out / "s_label.tiff").astype(np.int32)
    image_u8 = normalize(to_rgb(image), SLIDE_CFG)
    features = json.loads((out / "s.geojson").read_text())["features"]
    polygons = whole_extras.cell_polygons(labels)
    assert [f["properties"]["label"] for f in features] == [p.label for p in polygons]
    assert all(f["geometry"]["coordinates"][0] == p.ring.tolist() for f, p in zip(features, polygons))
    table = whole_extras.measure(labels, image_u8)
    rows = (out / "s_cells.csv").read_text().splitlines()
    assert rows[0].split(",") == list(whole_extras.MEASURE_COLUMNS) and len(rows) == 1 + len(table["label"])
    first = dict(zip(rows[0].split(","), rows[1].split(",")))
    assert int(first["label"]) == table["label"][0] and float(first["centroid_x"]) == round(table["centroid_x"][0], 4)
    with zipfile.ZipFile(out / "s_rois.zip") as archive:
        assert archive.namelist() == [f"{p.label}.roi" for p in polygons]
    picture = np.asarray(Image.open(out / "s_overlay.png"))
    small = labels[::3, ::3]
    edges = find_boundaries(small, connectivity=1, mode="inner", background=0)
    palette = np.asarray(OVERLAY_PALETTE, np.uint8)
    assert picture.shape == (300, 267, 3) and edges.any()
    assert np.array_equal(picture[edges], palette[small[edges] % len(palette)])  # every outline pixel drawn
    assert np.array_equal(picture[~edges], image_u8[::3, ::3][~edges])  # elsewhere the normalised slide
    line = next(line for line in lines if line.startswith("s.tif "))
    assert "median area" in line
    assert "-> s_label.tiff + s_overlay.png s_rois.zip s.geojson s_cells.csv" in line


def test_a_damaged_slide_is_one_failed_line_and_leaves_nothing(tmp_path: Path, model: Path,
                                                               scene: tuple[np.ndarray, np.ndarray]) -> None:
    image, _ = scene
    (tmp_path / "in").mkdir()
    path = write_tiled(tmp_path / "in" / "s.tif", image, levels=2)
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[20]  # a full-resolution tile; the overview comes from a level
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * 32)
    cfg = SLIDE_CFG.with_overrides(slide_overview_pixels=10_000)
    with logged("app") as lines:
        code = run_folder(tmp_path / "in", tmp_path / "out", model, cfg)
    assert code == 1
    failed = [line for line in lines if line.startswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith("FAILED s.tif: corrupt or truncated tile in rows ")
    assert list((tmp_path / "out").iterdir()) == []


def test_the_cell_size_is_estimated_on_the_tissue(tmp_path: Path, model: Path,
                                                  scene: tuple[np.ndarray, np.ndarray]) -> None:
    image, truth = scene
    cfg = SLIDE_CFG.with_overrides(scale_mode="adaptive", target_diameter=20.0, estimate_min_view=4.0)
    code, out, lines = predict(tmp_path, image, model, cfg)
    assert code == 0
    line = next(line for line in lines if line.startswith("s.tif "))
    diameter = float(line.split("diameter ")[1].split(" px (estimated)")[0])
    sizes = 2 * np.sqrt(np.bincount(truth.ravel())[1:] / np.pi)
    assert np.percentile(sizes, 10) <= diameter <= np.percentile(sizes, 90)  # the discs' size, not the glass's
    assert one_to_one(truth, tifffile.imread(out / "s_label.tiff")) == (truth.max(),) * 3
