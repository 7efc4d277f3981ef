"""``python -m training synth``: write a synthetic data set in the challenge layout."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import click

from training.synth.params import MODALITY_NAMES, SynthConfig


def _split_names(values: tuple[str, ...]) -> list[str]:
    """Accept repeated options and comma-separated lists alike."""
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


@click.command("synth")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write images/, labels/, unlabeled/ and meta.csv into.")
@click.option("--labelled", type=click.IntRange(min=0), default=100, show_default=True,
              help="Number of labelled images.")
@click.option("--unlabelled", type=click.IntRange(min=0), default=0, show_default=True,
              help="Number of unlabelled images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed; the same seed gives the same files.")
@click.option("--size", nargs=2, type=click.IntRange(min=32), default=(256, 768), show_default=True,
              metavar="MIN MAX", help="Range of image height and width in pixels.")
@click.option("--modalities", multiple=True, default=MODALITY_NAMES, show_default=True,
              help="Modalities to draw (repeat or comma-separate): " + ", ".join(MODALITY_NAMES) + ".")
@click.option("--flat", is_flag=True,
              help="Put labelled images directly in --out (labels/ and labels/meta.csv beside them), "
                   "so the folder can be given to `python -m app predict` as it is.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (the output does not depend on it).")
def synth(out: Path, labelled: int, unlabelled: int, seed: int, size: tuple[int, int],
          modalities: tuple[str, ...], flat: bool, workers: int) -> None:
    """Generate synthetic multi-modality microscopy with exact instance labels."""
    from training.synth.generate import generate_dataset

    lo, hi = size
    if lo > hi:
        raise click.BadParameter("MIN must not exceed MAX", param_hint="--size")
    try:
        cfg = SynthConfig(min_size=lo, max_size=hi).select(_split_names(modalities))
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--modalities") from err
    start = time.perf_counter()
    rows = generate_dataset(out, labelled, unlabelled, seed, cfg, workers=workers, progress=True, flat=flat)
    seconds = time.perf_counter() - start
    counts = Counter(r["modality"] for r in rows)
    cells = sum(r["cells"] for r in rows if r["split"] == "labelled")
    click.echo(
        f"{len(rows)} images ({labelled} labelled, {unlabelled} unlabelled, {cells} labelled cells) in "
        f"{seconds:.1f} s -> {out}"
    )
    click.echo("  " + ", ".join(f"{name} {counts[name]}" for name in MODALITY_NAMES if counts[name]))
