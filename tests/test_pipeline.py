"""One folder end to end through a real ONNX Runtime session of a tiny contract model: good images written,
every kind of bad file reported on one line, name clashes refused, folder problems fail before the model loads.
"""

from __future__ import annotations

import csv
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from app.config import EXTRA_SUFFIXES, InferenceConfig
from app.errors import ModelError
from app.pipeline import SetupError, read_report, run_folder
from tests.log_capture import logged
from tests.onnx_models import contract_model, disc_image

CFG = InferenceConfig(budget="none", threads=1, batch_size=2)
SHAPE = (160, 200)
CENTRES = [(40, 40), (40, 150), (115, 60), (120, 150)]  # four discs, well apart and off the border
RADIUS = 14


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # level 0.2: a disc in one channel of three (fluorescence) still reads as bright to the gray-mean model.
    return contract_model(tmp_path_factory.mktemp("model") / "tiny.onnx", level=0.2)


def _discs(value: int = 220) -> np.ndarray:
    return disc_image(SHAPE, CENTRES, RADIUS, value=value)


def _run(tmp_path: Path, model: Path, cfg: InferenceConfig = CFG, report: bool = True) -> tuple[int, list[str], Path]:
    out = tmp_path / "out"
    with logged("app.pipeline") as lines:
        code = run_folder(tmp_path / "in", out, model, cfg, out / "report.csv" if report else None)
    return code, lines, out


def _report(out: Path) -> dict[str, dict[str, str]]:
    return {row["image"]: row for row in read_report(out / "report.csv")}


def _count(path: Path) -> int:
    return len(np.unique(tifffile.imread(path))) - 1


def test_good_images_of_every_layout_are_segmented(tmp_path: Path, model: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    gray = _discs()
    iio.imwrite(src / "gray8.png", gray)
    tifffile.imwrite(src / "rgb16.tif", np.stack([gray.astype(np.uint16) * 200] * 3, axis=2), photometric="rgb")
    tifffile.imwrite(src / "chw.tiff", np.stack([gray] * 3), photometric="rgb", planarconfig="separate")
    fluo = np.zeros((*SHAPE, 3), np.uint8)
    fluo[..., 2] = gray
    iio.imwrite(src / "fluo.bmp", fluo)
    iio.imwrite(src / "empty.png", np.zeros(SHAPE, np.uint8))  # all zero: an empty label map, not a crash

    code, lines, out = _run(tmp_path, model)

    assert code == 0, lines
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "chw_label.tiff", "empty_label.tiff", "fluo_label.tiff", "gray8_label.tiff", "report.csv", "rgb16_label.tiff"
    ]
    for name in ["chw", "fluo", "gray8", "rgb16"]:
        labels = tifffile.imread(out / f"{name}_label.tiff")
        assert labels.shape == SHAPE and labels.dtype == np.uint16
        assert _count(out / f"{name}_label.tiff") == len(CENTRES), name
        assert labels[CENTRES[0]] != 0 and labels[0, 0] == 0
    assert not tifffile.imread(out / "empty_label.tiff").any()
    rows = _report(out)
    # One canonical layout (app.normalize.to_rgb): the same discs in grey, RGB, channel-first and in the blue
    # channel alone are one image to the model, recognised as fluorescence (bright on dark), sized alike.
    reference = tifffile.imread(out / "gray8_label.tiff")
    for name in ["chw", "fluo", "rgb16"]:
        np.testing.assert_array_equal(tifffile.imread(out / f"{name}_label.tiff"), reference, err_msg=name)
    for image in ["chw.tiff", "fluo.bmp", "gray8.png", "rgb16.tif"]:
        assert rows[image]["fluorescence"] == "True" and rows[image]["size_source"] == "estimated", image
        assert float(rows[image]["diameter"]) == pytest.approx(2 * RADIUS, rel=0.15), image
        assert rows[image]["scales"] == rows["gray8.png"]["scales"]
    fixed_code, _, fixed_out = _run(tmp_path, model, CFG.with_overrides(scale_mode="fixed"))
    assert fixed_code == 0
    fixed_row = _report(fixed_out)["fluo.bmp"]
    assert fixed_row["scales"] == "1.5" and fixed_row["size_source"] == "fixed"
    for row in rows.values():
        assert row["status"] == "ok" and float(row["seconds"]) > 0
        assert float(row["tolerance_s"]) == 10.0
        for stage in ["read_s", "normalise_s", "plan_s", "model_s", "postprocess_s", "write_s"]:
            assert float(row[stage]) >= 0, stage
    image_lines = [line for line in lines if "_label.tiff" in line]
    assert len(image_lines) == 5 and all("tolerance 10.0 s" in line and "penalised" in line for line in image_lines)


def test_bad_files_are_reported_one_line_each_and_the_rest_is_written(tmp_path: Path, model: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    iio.imwrite(src / "good.png", _discs())
    tifffile.imwrite(src / "good2.tif", _discs())
    (src / "zero.png").write_bytes(b"")
    full = iio.imwrite("<bytes>", _discs(), extension=".png")
    (src / "truncated.png").write_bytes(full[: len(full) // 2])
    (src / "corrupt.tif").write_bytes(b"II*\x00" + bytes(range(256)) * 4)
    tifffile.imwrite(src / "shape.tif", np.zeros((20, 30, 6), np.uint8), photometric="minisblack",
                     planarconfig="contig")
    iio.imwrite(src / "huge.png", np.zeros((400, 500), np.uint8))
    (src / "notes.txt").write_text("not an image")
    iio.imwrite(src / ".hidden.png", _discs())
    (src / "labels").mkdir()  # a label folder beside the images is normal: no warning
    (src / "folder.png").mkdir()  # a folder named like an image is worth one
    tifffile.imwrite(src / "good.tiff", _discs())  # same output name as good.png: an error, never an overwrite
    out = tmp_path / "out"
    out.mkdir()
    (out / "blocked_label.tiff").mkdir()  # writing this output fails after segmentation
    iio.imwrite(src / "blocked.png", _discs())

    code, lines, out = _run(tmp_path, model, CFG.with_overrides(max_pixels=100_000))

    assert code == 1
    assert tifffile.imread(out / "good_label.tiff").shape == SHAPE
    assert _count(out / "good_label.tiff") == len(CENTRES)
    assert _count(out / "good2_label.tiff") == len(CENTRES)
    expected = {
        "zero.png": "empty file",
        "truncated.png": "corrupt or truncated",
        "corrupt.tif": "corrupt or truncated",
        "shape.tif": "more than 4 channels",
        "huge.png": "too many pixels",
        "good.tiff": "already taken by good.png",
        "blocked.png": "IsADirectoryError",
        "notes.txt": "skipped notes.txt",
        "folder.png": "skipped folder.png: not a regular file",
    }
    for name, reason in expected.items():
        hits = [line for line in lines if name in line and "\n" not in line]
        assert len(hits) == 1, (name, lines)
        assert reason in hits[0], (name, hits[0])
    assert not [line for line in lines if ".hidden.png" in line or "skipped labels" in line]
    rows = _report(out)
    assert {n for n, r in rows.items() if r["status"] == "error"} == {
        "zero.png", "truncated.png", "corrupt.tif", "shape.tif", "huge.png", "good.tiff", "blocked.png"
    }
    assert rows["good.png"]["status"] == "ok" and rows["good2.tif"]["status"] == "ok"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    expected = ["blocked_label.tiff", "good2_label.tiff", "good_label.tiff", "report.csv"]
    assert sorted(p.name for p in out.iterdir()) == expected


def test_missing_input_folder_fails_before_the_model_loads(tmp_path: Path) -> None:
    with pytest.raises(SetupError, match="input folder .* does not exist"):
        run_folder(tmp_path / "nope", tmp_path / "out", tmp_path / "no_model.onnx", CFG)


def test_unwritable_output_folder_fails_at_once(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(SetupError, match="output folder .* is not writable"):
        run_folder(tmp_path / "in", tmp_path / "file", tmp_path / "no_model.onnx", CFG)
    with pytest.raises(SetupError, match="output folder .* is not writable"):
        run_folder(tmp_path / "in", tmp_path / "file" / "sub", tmp_path / "no_model.onnx", CFG)


def test_missing_model_is_a_model_error(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    with pytest.raises(ModelError):
        run_folder(tmp_path / "in", tmp_path / "out", tmp_path / "no_model.onnx", CFG)


def test_empty_folder_is_not_an_error(tmp_path: Path, model: Path) -> None:
    (tmp_path / "in").mkdir()
    code, lines, out = _run(tmp_path, model)
    assert code == 0
    assert any("no images" in line for line in lines)
    assert (out / "report.csv").read_text().startswith("image,output,status")


def test_extras_are_written_beside_label_files_that_stay_byte_identical(tmp_path: Path, model: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    iio.imwrite(src / "gray8.png", _discs())
    assert _run(tmp_path, model)[0] == 0
    plain = (tmp_path / "out" / "gray8_label.tiff").read_bytes()
    out = tmp_path / "extra"
    with logged("app.pipeline") as lines:
        code = run_folder(src, out, model, CFG, out / "report.csv", extras=list(EXTRA_SUFFIXES))

    assert code == 0, lines
    assert sorted(p.name for p in out.iterdir()) == [
        "gray8.geojson", "gray8_cells.csv", "gray8_label.tiff", "gray8_overlay.png", "gray8_rois.zip", "report.csv"
    ]
    assert (out / "gray8_label.tiff").read_bytes() == plain
    labels = tifffile.imread(out / "gray8_label.tiff")
    with open(out / "gray8_cells.csv", newline="") as handle:
        cells = list(csv.DictReader(handle))
    assert [int(c["area"]) for c in cells] == np.bincount(labels.ravel())[1:].tolist() and len(cells) == len(CENTRES)
    assert iio.imread(out / "gray8_overlay.png").shape == (*SHAPE, 3)
    (line,) = [line for line in lines if line.startswith("gray8.png")]
    median = np.median(np.bincount(labels.ravel())[1:])
    assert f"4 cells (median area {median:g} px, diameter " in line
    assert line.endswith("-> gray8_label.tiff + gray8_overlay.png gray8_rois.zip gray8.geojson gray8_cells.csv")
    row = _report(out)["gray8.png"]
    assert row["extras"] == "gray8_overlay.png gray8_rois.zip gray8.geojson gray8_cells.csv"
    assert float(row["median_area"]) == median and float(row["median_diameter"]) > 0
    # Each extra is timed as its own stage (an extra of 4 cells can take under the report's 1 ms resolution).
    assert all(row[f"{name}_s"] != "" and float(row[f"{name}_s"]) >= 0 for name in EXTRA_SUFFIXES)


def test_a_failed_extra_keeps_the_label_file_and_exits_1(tmp_path: Path, model: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    iio.imwrite(src / "gray8.png", _discs())
    out = tmp_path / "out"
    out.mkdir()
    (out / "gray8_overlay.png").mkdir()  # the overlay cannot be written
    with logged("app.pipeline") as lines:
        code = run_folder(src, out, model, CFG, out / "report.csv", extras=["overlay", "measure"])

    assert code == 1
    assert _count(out / "gray8_label.tiff") == len(CENTRES)
    assert (out / "gray8_cells.csv").is_file()
    failed = [line for line in lines if line.startswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith("FAILED gray8_overlay.png: IsADirectoryError"), lines
    assert lines[-1].endswith("1 of 1 image(s) written to " + str(out) + "; 1 extra file(s) failed")
    row = _report(out)["gray8.png"]
    assert row["status"] == "ok" and row["message"].startswith("gray8_overlay.png: IsADirectoryError")
    assert row["extras"] == "gray8_cells.csv"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_unknown_extra_fails_before_the_model_loads(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    with pytest.raises(SetupError, match="unknown extra output"):
        run_folder(tmp_path / "in", tmp_path / "out", tmp_path / "no_model.onnx", CFG, extras=["pdf"])
