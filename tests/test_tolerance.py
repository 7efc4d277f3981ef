"""The challenge's tolerance and penalty formula."""

from __future__ import annotations

import pytest

from app.tolerance import penalised, tolerance


@pytest.mark.parametrize(
    "h, w, expected",
    [(100, 100, 10.0), (1000, 1000, 10.0), (1000, 1001, 10.01), (3000, 3000, 90.0), (10_000, 10_000, 1000.0)],
)
def test_tolerance(h: int, w: int, expected: float) -> None:
    assert tolerance(h, w) == pytest.approx(expected)


def test_penalised_is_time_above_tolerance_never_negative() -> None:
    assert penalised(4.0, 512, 512) == 0.0
    assert penalised(10.0, 512, 512) == 0.0
    assert penalised(12.5, 512, 512) == pytest.approx(2.5)
    assert penalised(100.0, 3000, 3000) == pytest.approx(10.0)
    # The MT2 authors' whole-slide run: 2354 s against 8415 x 10496.
    assert penalised(2354.0, 8415, 10496) == pytest.approx(2354.0 - 10.0 * 8415 * 10496 / 1e6)
