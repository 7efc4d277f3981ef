"""Measuring where the time goes: per-stage seconds of one image, and the age of this process.

Every stage of the prediction path adds its seconds to one `timings` dict (stage name -> seconds), which the
report and the benchmarks read; `timed` is the one way they are measured.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator

_IMPORTED = time.monotonic()


def add_seconds(timings: dict[str, float] | None, key: str, seconds: float) -> None:
    """Add `seconds` to `timings[key]` (no-op when timings is None)."""
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + seconds


@contextmanager
def timed(timings: dict[str, float] | None, key: str) -> Iterator[None]:
    """Add the seconds spent in the block to `timings[key]` (no-op when timings is None)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        add_seconds(timings, key, time.perf_counter() - start)


def process_age() -> float:
    """Seconds since this process started (interpreter start-up and imports included).

    Read from /proc where there is one; elsewhere it falls back to the time since this module was imported.
    """
    try:
        with open("/proc/self/stat", "rb") as handle:
            stat = handle.read().decode()
        with open("/proc/uptime", "rb") as handle:
            uptime = float(handle.read().split()[0])
        # Field 22 (starttime, in clock ticks since boot); fields after the ")" of the command name.
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
        if age >= 0:
            return age
    except (OSError, ValueError, IndexError):
        pass
    return time.monotonic() - _IMPORTED


__all__ = ["add_seconds", "process_age", "timed"]
