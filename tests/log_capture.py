"""Log lines of a project logger while a block runs, for tests of code that reports through module loggers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class _Lines(logging.Handler):
    def __init__(self, on_line: Callable[[str], None] | None) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.on_line = on_line

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage()
        self.lines.append(line)
        if self.on_line is not None:
            self.on_line(line)


@contextmanager
def logged(name: str, on_line: Callable[[str], None] | None = None) -> Iterator[list[str]]:
    """The messages (INFO and above) logged under `name` while the block runs; `on_line` sees each as it comes."""
    logger, handler = logging.getLogger(name), _Lines(on_line)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
