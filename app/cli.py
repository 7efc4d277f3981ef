"""Command line: ``python -m app predict | evaluate | timing``."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name=None, version=__import__("app").__version__)
def cli() -> None:
    """MT2 cell segmentation for multi-modality microscopy."""


# Commands are added below by the modules that own them (predict, evaluate, timing).
