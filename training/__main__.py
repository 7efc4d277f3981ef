"""Command line: ``python -m training train | export | quantize | split | synth``."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def cli() -> None:
    """Train, export and make data for MT2 (needs the packages in training/requirements.txt)."""
    from app.logs import setup_logging

    setup_logging()


# Commands are added below by the modules that own them (train, export, synth).


@cli.command()
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Training checkpoint (.pt).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the ONNX files and manifest.json.")
@click.option("--which", type=click.Choice(["teacher", "student"]), default="teacher", show_default=True,
              help="Weights to export (falls back to the student when there is no teacher).")
@click.option("--sizes", default="256,320x448", show_default=True,
              help="Verification image sizes, HxW or one side, comma-separated, multiples of 32.")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True,
              help="Where ONNX Runtime runs the verification.")
@click.option("--threads", type=int, default=0, help="ONNX Runtime threads (0: its default).")
@click.option("--no-slim", is_flag=True, help="Skip onnxslim simplification.")
@click.option("--no-int8", is_flag=True, help="Skip the int8 CPU model (mt2.int8.onnx).")
@click.option("--calibration", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Training image folder for the int8 calibration (challenge layout or plain images); repeat for "
                   "several. [default: the checkpoint's training sources, validation images left out]")
@click.option("--verify-only", is_flag=True,
              help="Re-check the files already in --out against the checkpoint; write nothing.")
def export(checkpoint, out_dir, which, sizes, device, threads, no_slim, no_int8, calibration, verify_only) -> None:
    """Export a checkpoint to verified fp32, fp16 and int8 ONNX models with a manifest."""
    from app.errors import ModelError
    from training.export import export_checkpoint, parse_sizes, verify_directory
    from training.parity import ExportCheckError

    try:
        hw = parse_sizes(sizes)
        if verify_only:
            parity, int8 = verify_directory(checkpoint, out_dir, which, hw, device, threads)
            click.echo(f"verified {out_dir}: {parity.summary()}" + (f"; {int8.summary()}" if int8 else ""))
        else:
            result = export_checkpoint(checkpoint, out_dir, which, hw, not no_slim, device, threads,
                                       int8=not no_int8, calibration=calibration)
            click.echo(f"wrote {', '.join(result.files)} and {result.manifest.name} to {out_dir}")
    except (ExportCheckError, ModelError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@cli.command("quantize")
@click.option("--weights", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Weights folder holding mt2.fp32.onnx and manifest.json; mt2.int8.onnx is added to both.")
@click.option("--calibration", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Training image folder (challenge layout or plain images); repeat for several. [default: the "
                   "training sources the manifest records, validation images left out]")
@click.option("--sizes", default="256,320x448", show_default=True,
              help="Verification image sizes, HxW or one side, comma-separated, multiples of 32.")
@click.option("--threads", type=int, default=0, help="ONNX Runtime threads of the verification (0: its default).")
def quantize_command(weights, calibration, sizes, threads) -> None:
    """Add a verified int8 CPU model to an exported weights folder (no checkpoint needed)."""
    from app.errors import ModelError
    from app.runner import INT8_FILE
    from training.export import parse_sizes
    from training.parity import ExportCheckError
    from training.quantize import quantize_weights

    try:
        parity = quantize_weights(weights, calibration, sizes=parse_sizes(sizes), threads=threads)
    except (ExportCheckError, ModelError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {INT8_FILE} to {weights}: {parity.summary()}")


@cli.command("train")
@click.option("--config", "config", default=None, help="Preset name (cpu, ship, paper) or a TOML file.")
@click.option("--data", "data_dirs", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Challenge layout: images/, labels/, unlabeled/. Repeat for several sources (added to the "
                   "config's data.sources; their sampling weights: --set data.weights=[...] in that order).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Run folder for checkpoints, log.csv and the cache.")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Continue the run in this folder from its last.pt.")
@click.option("--encoder-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="torchvision-style ImageNet state dict for the encoder (else random init).")
@click.option("--init-onnx", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Start from the weights of an exported fp32 model (e.g. weights/mt2.fp32.onnx) to fine-tune it; "
                   "the preset's model must have its architecture.")
@click.option("--continue-from", "continue_from", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Take up the schedule of the run that exported this weights folder (its manifest.json records "
                   "the step and planned length) in a new run folder: the weights become student and teacher.")
@click.option("--stop-at-step", type=click.IntRange(min=1), default=None,
              help="Stop after this optimiser step with a checkpoint, the planned schedule unchanged (resume goes on).")
@click.option("--epochs", type=int, default=None, help="Override schedule.epochs.")
@click.option("--max-steps", type=int, default=None, help="Override schedule.max_steps.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override any config field.")
def train_command(
    config, data_dirs, out_dir, resume_dir, encoder_weights, init_onnx, continue_from, stop_at_step, epochs, max_steps,
    overrides,
) -> None:
    """Train MT2 (supervised warm-up, then Mean Teacher); prints the best checkpoint's path."""
    from training.checkpoint import load_checkpoint
    from training.config import ConfigError, TrainConfig, load_config, parse_override, with_overrides
    from training.schedule import continuation
    from training.trainer import LAST, train

    if out_dir is None and resume_dir is None:
        raise click.UsageError("give --out RUN_DIR (or --resume RUN_DIR)")
    if out_dir is not None and resume_dir is not None and out_dir.resolve() != resume_dir.resolve():
        raise click.UsageError("--out and --resume name different folders")
    starts = [name for name, value in (("--resume", resume_dir), ("--encoder-weights", encoder_weights),
                                       ("--init-onnx", init_onnx), ("--continue-from", continue_from)) if value]
    if len(starts) > 1:
        raise click.UsageError(f"{' and '.join(starts)} name different starting points: give one")
    if continue_from is not None and out_dir is None:
        raise click.UsageError("--continue-from needs --out RUN_DIR (a new run folder)")
    run_dir = resume_dir or out_dir
    changes = dict(parse_override(text) for text in overrides)
    if epochs is not None:
        changes["schedule.epochs"] = epochs
    if max_steps is not None:
        changes["schedule.max_steps"] = max_steps
    try:
        start_step = 0
        if config is not None:
            cfg = load_config(config, changes)
        elif resume_dir is not None:
            cfg = with_overrides(TrainConfig.from_dict(load_checkpoint(resume_dir / LAST)["config"]), changes)
        elif continue_from is None:
            raise click.UsageError("give --config PRESET_OR_FILE")
        if continue_from is not None:
            taken = continuation(continue_from, cfg if config is not None else None)
            cfg, init_onnx, start_step = with_overrides(taken.config, changes), taken.onnx, taken.step
            if data_dirs:  # the folders named now replace those the manifest recorded
                cfg = with_overrides(cfg, {"data.sources": [str(d) for d in data_dirs]})
        new_dirs = [str(d) for d in data_dirs if str(d) not in cfg.data.sources]
        if new_dirs:
            cfg = with_overrides(cfg, {"data.sources": [*cfg.data.sources, *new_dirs]})
        best = train(cfg, None, run_dir, resume=resume_dir is not None, encoder_weights=encoder_weights,
                     init_onnx=init_onnx, start_step=start_step, stop_at=stop_at_step)
    except (ConfigError, FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(str(best))


@cli.command("split")
@click.option("--data", "sources", multiple=True, required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Labelled folder (images/ + labels/); repeat for several sources.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for OUT/train|tune|val/<source>/ (links to the files) and OUT/groups.csv.")
@click.option("--val", type=click.FloatRange(0, 0.9), default=0.15, show_default=True,
              help="Fraction of each source's images for validation.")
@click.option("--tune", type=click.FloatRange(0, 0.9), default=0.10, show_default=True,
              help="Fraction for tuning the app's settings (not validation, not training).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the group assignment.")
def split_command(sources, out, val, tune, seed) -> None:
    """Group neighbouring crops and near-duplicates, then split whole groups into train / tune / val."""
    from collections import Counter

    from training.split import write_split

    rows = write_split(list(sources), out, val, tune, seed)
    for source in sources:
        mine = [r for r in rows if r["source"] == source.name]
        parts = Counter(r["part"] for r in mine)
        groups = len({r["group"] for r in mine if r["group"]})
        click.echo(f"{source.name}: {groups} groups; " + ", ".join(f"{k} {v}" for k, v in sorted(parts.items())))
    click.echo(f"wrote {out}")


from training.synth.cli import synth  # noqa: E402  (kept beside the other commands)

cli.add_command(synth)


if __name__ == "__main__":
    cli()
