"""The challenge's running-time rule: the tolerance an image of a given size gets, and the time it is ranked on.

Tolerance for an H×W image: 10 s up to one megapixel, then 10 s per megapixel; only the time above it counts.
"""

from __future__ import annotations

from app.config import CHALLENGE


def tolerance(height: int, width: int) -> float:
    """Seconds an image of this size may take before the challenge counts any running time."""
    pixels = float(height) * float(width)
    if pixels <= CHALLENGE.tolerance_pixels:
        return CHALLENGE.tolerance_seconds
    return CHALLENGE.tolerance_seconds * pixels / CHALLENGE.tolerance_pixels


def penalised(seconds: float, height: int, width: int) -> float:
    """Running time the challenge ranks: the part of `seconds` above the tolerance, never negative."""
    return max(0.0, seconds - tolerance(height, width))


__all__ = ["penalised", "tolerance"]
