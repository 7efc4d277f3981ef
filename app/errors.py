"""Error types the app reports to the user as one line."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """One input file cannot be processed; the rest of the folder still is."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path.name}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:
        # Rebuilt from (path, reason) when it crosses processes (a Dask worker's error reaching the pipeline).
        return type(self), (self.path, self.reason)


class ModelError(Exception):
    """The model file is missing, changed, or does not fit the app's model contract."""
