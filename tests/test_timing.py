"""Stage timing and the process age used as start-up time."""

from __future__ import annotations

import time

import pytest

from app.timing import add_seconds, process_age, timed


def test_process_age_is_positive_and_grows() -> None:
    first = process_age()
    time.sleep(0.05)
    assert 0.0 < first < process_age()


def test_timed_adds_the_block_seconds_even_when_it_raises() -> None:
    timings: dict[str, float] = {"model": 1.0}
    with timed(timings, "model"):
        time.sleep(0.02)
    assert timings["model"] >= 1.02
    with pytest.raises(RuntimeError), timed(timings, "fuse"):
        raise RuntimeError("stage failed")
    assert timings["fuse"] >= 0.0
    add_seconds(timings, "fuse", 2.0)
    assert timings["fuse"] >= 2.0
    with timed(None, "model"):  # no dict: nothing recorded, nothing raised
        pass
    add_seconds(None, "model", 1.0)
