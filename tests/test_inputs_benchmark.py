"""benchmarks/inputs.py end to end on two small images with the tiny contract model: both tables, scored."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile

from benchmarks import inputs
from tests.onnx_models import contract_model, disc_image

CENTRES = [(30, 30), (30, 90), (90, 40), (95, 100)]


def test_layouts_and_sizes_tables(tmp_path: Path) -> None:
    folder = tmp_path / "lab"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    for i in range(2):
        centres = [(y + i, x) for y, x in CENTRES]
        iio.imwrite(folder / "images" / f"c{i}.png", disc_image((128, 128), centres, 12))
        labels = np.zeros((128, 128), np.uint16)
        yy, xx = np.mgrid[:128, :128]
        for k, (y, x) in enumerate(centres, 1):
            labels[(yy - y) ** 2 + (xx - x) ** 2 <= 144] = k
        tifffile.imwrite(folder / "labels" / f"c{i}_label.tiff", labels, compression="zlib")
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
