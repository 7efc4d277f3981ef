"""benchmarks/extras.py on small maps: the generated cells, the memory probe and the printed table."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import extras as bench


def test_cell_map_is_sequential_and_many_cells() -> None:
    labels = bench.cell_map(300, spacing=30)
    assert labels.shape == (300, 300) and labels.dtype == np.int32
    values = np.unique(labels)
    assert values[0] == 0 and np.array_equal(values[1:], np.arange(1, 101))  # a 10 x 10 grid, labels 1..100
    areas = np.bincount(labels.ravel())[1:]
    assert areas.min() >= 0.2 * 0.2 * np.pi * 30**2 * 0.7 and areas.max() <= 30 * 30
    repeated = bench.cell_map(2500, spacing=30)  # larger than one patch: copies get fresh labels
    assert int(repeated.max()) == len(np.unique(repeated)) - 1 > 6000


def test_peak_memory_sees_a_short_lived_array_and_not_what_was_there_before() -> None:
    kept = np.ones(50_000_000, np.uint8)  # resident before: not counted
    with bench.PeakMemory() as memory:
        np.ones(100_000_000, np.uint8).sum()  # freed before the block ends
    assert 90e6 < memory.extra < 130e6, memory.extra
    del kept


def test_main_prints_one_row_per_size_and_extra(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--sizes", "0.01,0.04", "--spacing", "20"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| 0.0")]
    assert len(rows) == 8
    assert rows[0].startswith("| 0.01 | 100 x 100 | 25 | 0 | overlay | `_overlay.png` |")
    assert any("| measure | `_cells.csv` |" in row for row in rows)
