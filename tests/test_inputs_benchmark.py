"""benchmarks/inputs.py end to end on two small images with the tiny contract model: both tables, scored."""

from __future__ import annotations

from pathlib import Path

import tifffile

from benchmarks import inputs
from tests.onnx_models import contract_model, labelled_disc_folder

CENTRES = [(30, 30), (30, 90), (90, 40), (95, 100)]


def test_layouts_and_sizes_tables(tmp_path: Path) -> None:
    folder = labelled_disc_folder(tmp_path / "lab", 2, (128, 128), CENTRES, 12)
    model = contract_model(tmp_path / "m.onnx", level=0.2)
    out = tmp_path / "table.md"
    assert inputs.main(["--folders", str(folder), "--model", str(model), "--threads", "1", "--flips", "1",
                        "--work", str(tmp_path / "work"), "--markdown", str(out)]) == 0
    text = out.read_text()
    layout_row = next(line for line in text.splitlines() if line.startswith("| lab | 2 |"))
    cells = [float(c) for c in layout_row.strip("|").split("|")[2:]]
    assert len(cells) == len(inputs.LAYOUTS) + 1 and cells[-1] <= 0.02  # four layouts, one result
    assert min(cells[:-1]) > 0.9
    size_row = [line for line in text.splitlines() if line.startswith("| lab | 2 |")][1]
    assert len(size_row.strip("|").split("|")) == 2 + len(inputs.MODES) * len(inputs.RESIZES) + 2
    assert (tmp_path / "work" / "sizes" / "0" / "x0.5" / "labels" / "c0_label.tiff").exists()
    assert tifffile.imread(tmp_path / "work" / "sizes" / "0" / "x2" / "labels" / "c1_label.tiff").shape == (256, 256)


def test_sizes_for_one_mode(tmp_path: Path) -> None:
    folder = labelled_disc_folder(tmp_path / "lab", 1, (128, 128), CENTRES, 12)
    model = contract_model(tmp_path / "m.onnx", level=0.2)
    out = tmp_path / "table.md"
    assert inputs.main(["--folders", str(folder), "--model", str(model), "--threads", "1", "--flips", "1",
                        "--part", "sizes", "--modes", "fixed", "--markdown", str(out)]) == 0
    header, row = (line for line in out.read_text().splitlines() if line.startswith(("| folder", "| lab |")))
    assert "adaptive" not in header and header.count("fixed") == len(inputs.RESIZES) + 1
    assert len(row.strip("|").split("|")) == 2 + len(inputs.RESIZES) + 1


def test_grey_pairs_skips_colour_images_and_stops_at_the_limit(tmp_path: Path) -> None:
    import imageio.v3 as iio
    import numpy as np

    folder = labelled_disc_folder(tmp_path / "lab", 3, (32, 32), [(16, 16)], 6)
    colour = np.zeros((32, 32, 3), np.uint8)
    colour[..., 0] = 200  # a red image is not grey: it has no single signal to save in other layouts
    iio.imwrite(folder / "images" / "c0.png", colour)
    chosen = inputs.grey_pairs(folder, 1)
    assert [image.name for image, _, _ in chosen] == ["c1.png"]
    assert chosen[0][2].shape == (32, 32)
    assert [image.name for image, _, _ in inputs.grey_pairs(folder, 0)] == ["c1.png", "c2.png"]
