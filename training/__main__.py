"""Command line: ``python -m training train | export | synth``."""

from __future__ import annotations

import click


@click.group()
def cli() -> None:
    """Train, export and make data for MT2 (needs the packages in training/requirements.txt)."""


# Commands are added below by the modules that own them (train, export, synth).

if __name__ == "__main__":
    cli()
