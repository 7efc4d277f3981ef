"""Where the command lines' messages go: every module logs to `logging.getLogger(__name__)`; this sets the one
handler (Cellpose's style), so a library caller decides for itself.

The rule: INFO (what happened: one line per image, the model line, the summary) goes to stdout; WARNING (skipped
files, fallbacks; prefixed "warning: ") and ERROR (failures, whose lines say FAILED or name the error) to
stderr; DEBUG (the planner's reasoning, shown with --verbose) to stderr.
Lines go through `tqdm.write`, so they never tear a progress bar, and the streams are looked up per line, so
a caller that swaps sys.stdout (click's test runner) still sees them.
"""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

PACKAGES = ("app", "training")  # the packages whose module loggers this handler serves


class LineFormatter(logging.Formatter):
    """The message alone; a warning says it is one."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"warning: {text}" if record.levelno == logging.WARNING else text


class TqdmHandler(logging.Handler):
    """Writes each record's message as one line: INFO to stdout (with `info_to_stdout`), the rest to stderr."""

    def __init__(self, info_to_stdout: bool = True) -> None:
        super().__init__()
        self.info_to_stdout = info_to_stdout

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stdout if self.info_to_stdout and record.levelno == logging.INFO else sys.stderr
            tqdm.write(self.format(record), file=stream)
            stream.flush()
        except Exception:  # noqa: BLE001 - logging's own contract: a failed write is reported, never raised
            self.handleError(record)


def setup_logging(verbose: bool = False, info_to_stdout: bool = True) -> None:
    """Route the project's loggers to one `TqdmHandler` at INFO (DEBUG with `verbose`); safe to call again.

    A script whose stdout is a table (the benchmarks) passes `info_to_stdout=False`: every line to stderr.
    """
    for name in PACKAGES:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, TqdmHandler)]:
            logger.removeHandler(handler)
        handler = TqdmHandler(info_to_stdout)
        handler.setFormatter(LineFormatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)


def silence(package: str) -> None:
    """Keep only the errors of `package` (the ranks of a distributed run other than the first)."""
    logging.getLogger(package).setLevel(logging.ERROR)


__all__ = ["PACKAGES", "LineFormatter", "TqdmHandler", "setup_logging", "silence"]
