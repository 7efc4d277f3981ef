"""The challenge's running-time tolerance and penalty, and the age of this process.

Tolerance for an H×W image: 10 s up to one megapixel, then 10 s per megapixel; only the time above it counts.
"""

from __future__ import annotations

import os
import time

from app.config import CHALLENGE

_IMPORTED = time.monotonic()


def tolerance(height: int, width: int) -> float:
    """Seconds an image of this size may take before the challenge counts any running time."""
    pixels = float(height) * float(width)
    if pixels <= CHALLENGE.tolerance_pixels:
        return CHALLENGE.tolerance_seconds
    return CHALLENGE.tolerance_seconds * pixels / CHALLENGE.tolerance_pixels


def penalised(seconds: float, height: int, width: int) -> float:
    """Running time the challenge ranks: the part of `seconds` above the tolerance, never negative."""
    return max(0.0, seconds - tolerance(height, width))


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
