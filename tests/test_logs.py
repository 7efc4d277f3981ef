"""The command lines' log routing: results to stdout, warnings and errors to stderr, debug only when asked."""

from __future__ import annotations

import logging

import pytest

from app.logs import PACKAGES, TqdmHandler, setup_logging, silence


@pytest.fixture(autouse=True)
def _restore_loggers():
    saved = {name: (logging.getLogger(name).level, list(logging.getLogger(name).handlers)) for name in PACKAGES}
    yield
    for name, (level, handlers) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers[:] = handlers


def test_info_goes_to_stdout_and_warnings_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging()
    log = logging.getLogger("app.pipeline")
    log.debug("planner detail")
    log.info("cell.png  written")
    log.warning("skipped notes.txt: not an image")
    log.error("FAILED broken.png: corrupt")
    out, err = capsys.readouterr()
    assert out == "cell.png  written\n"
    assert err == "warning: skipped notes.txt: not an image\nFAILED broken.png: corrupt\n"


def test_verbose_shows_debug_lines_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(verbose=True)
    logging.getLogger("app.plan").debug("plan for 10 x 10: one scale")
    assert capsys.readouterr().err == "plan for 10 x 10: one scale\n"


def test_setup_twice_keeps_one_handler_per_package(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging()
    setup_logging()
    for name in PACKAGES:
        assert sum(isinstance(h, TqdmHandler) for h in logging.getLogger(name).handlers) == 1
    logging.getLogger("training.trainer").info("epoch 1")
    assert capsys.readouterr().out == "epoch 1\n"


def test_scripts_can_send_everything_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(info_to_stdout=False)
    logging.getLogger("training.trainer").info("epoch 1")
    out, err = capsys.readouterr()
    assert out == "" and err == "epoch 1\n"


def test_silenced_package_keeps_only_errors(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging()
    silence("training")
    log = logging.getLogger("training.trainer")
    log.info("epoch 1")
    log.warning("no teacher")
    log.error("cannot write")
    out, err = capsys.readouterr()
    assert out == "" and err == "cannot write\n"
