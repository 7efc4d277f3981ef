"""Command line: ``python -m training.gpu_kit pack | run | check | predict | split | join``.

`pack` runs where the data is; `run`, `check` and `predict` run on the CUDA machine and first prepare the
environment from the kit (`env.prepare`), so nothing here imports torch-side packages at the top.
"""

from __future__ import annotations

from pathlib import Path

import click

from training.gpu_kit.layout import LIMITS, MIB


@click.group()
def cli() -> None:
    """Train MT2 on a CUDA machine without network: build the kit here, run it there."""
    from app.logs import setup_logging

    setup_logging()


@cli.command("pack")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Kit folder to write.")
@click.option("--data", "data_dirs", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Labelled folder (images/, labels/, unlabeled/) packed from its files; repeat, in the preset's "
                   "source order.")
@click.option("--synthetic", "synth_dirs", multiple=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder written by python -m training synth, carried as its recipe (after the --data folders).")
@click.option("--synth-seed", type=int, default=2026, show_default=True,
              help="The seed the synthetic folder was made with.")
@click.option("--synth-size", nargs=2, type=int, default=(256, 640), show_default=True, metavar="MIN MAX",
              help="Its --size range.")
@click.option("--synth-modalities", default="brightfield,fluorescence,phase,dic", show_default=True,
              help="Its modalities, comma-separated.")
@click.option("--check-every", is_flag=True, help="Regenerate every synthetic image to compare (default: a spread).")
@click.option("--wheels-from", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Copy the pinned wheels from this folder instead of pip download.")
@click.option("--preset", default="long", show_default=True, help="Preset the kit trains with by default.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Processes reading files.")
@click.option("--kit-mib", type=float, default=LIMITS.kit_mib, show_default=True, help="Largest kit.")
@click.option("--travel-mib", type=float, default=LIMITS.travel_mib, show_default=True,
              help="Largest working tree plus kit.")
def pack(out, data_dirs, synth_dirs, synth_seed, synth_size, synth_modalities, check_every, wheels_from, preset,
         workers, kit_mib, travel_mib) -> None:
    """Build the kit: data packed, synthetic folders as recipes, wheels, manifest (see docs/TRAINING.md)."""
    from dataclasses import replace

    from training.gpu_kit.pack import SourceSpec, build_kit
    from training.gpu_kit.synthetic import folder_recipe

    modalities = tuple(m.strip() for m in synth_modalities.split(",") if m.strip())
    try:
        specs = [SourceSpec(folder) for folder in data_dirs]
        specs += [SourceSpec(folder, folder_recipe(folder, synth_seed, tuple(synth_size), modalities))
                  for folder in synth_dirs]
        manifest = build_kit(out, specs, wheels_from, workers, preset,
                             replace(LIMITS, kit_mib=kit_mib, travel_mib=travel_mib), check_every=check_every)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        raise click.ClickException(str(error)) from None
    left = sum(len(s.get("left_out", [])) for s in manifest["sources"])
    travel = manifest["travel"]
    click.echo(f"wrote {out}: {manifest['bytes'] / MIB:.1f} MiB (limit {travel['kit_limit_bytes'] / MIB:.1f} MiB "
               f"beside a {travel['tree_bytes'] / MIB:.1f} MiB working tree)"
               + (f"; {left} image(s) left out to fit" if left else ""))


@cli.command("run")
@click.option("--kit", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder for gpu.pt, curve.csv and run.json.")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), default=8.0, show_default=True,
              help="Minutes of training steps (setup not counted).")
@click.option("--max-steps", type=click.IntRange(min=0), default=0, help="Stop after this many steps (0: time only).")
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True)
@click.option("--config", default=None, help="Preset name or TOML file. [default: the kit's preset]")
@click.option("--init-onnx", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Start from an exported fp32 model (e.g. weights/mt2.fp32.onnx).")
@click.option("--continue-from", type=click.Path(exists=True, path_type=Path), default=None,
              help="Start from a checkpoint (gpu.pt, last.pt) or a folder holding one, or a weights folder.")
@click.option("--batch", type=click.IntRange(min=1), default=None, help="Labelled crops per step. [default: 32]")
@click.option("--unlabelled-batch", type=click.IntRange(min=1), default=None,
              help="Unlabelled crops per step. [default: 16]")
@click.option("--lr", type=float, default=None, help="Peak learning rate of encoder and decoder. [default: 1e-3]")
@click.option("--workers", type=click.IntRange(min=0), default=0, help="Data processes (0: every CPU).")
@click.option("--no-amp", is_flag=True, help="float32 forward passes instead of bfloat16 autocast.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE", help="Override any config field.")
def run_command(kit, out, minutes, max_steps, device, config, init_onnx, continue_from, batch, unlabelled_batch, lr,
                workers, no_amp, overrides) -> None:
    """Train for --minutes on the GPU with data and augmentation there; print progress, write the checkpoint."""
    from training.gpu_kit.env import prepare

    done = prepare(kit)
    from dataclasses import replace

    from training.config import ConfigError, parse_override
    from training.gpu_kit.run import GpuRecipe, RunOptions, train

    recipe = GpuRecipe()
    recipe = replace(recipe, batch_size=batch or recipe.batch_size,
                     unlabelled_batch_size=unlabelled_batch or recipe.unlabelled_batch_size,
                     lr=lr or recipe.lr, encoder_lr=lr or recipe.encoder_lr)
    if done["installed"] or done["stand_ins"]:
        click.echo(f"environment: installed {done['installed'] or 'nothing'}; stand-ins {done['stand_ins'] or 'none'}")
    try:
        options = RunOptions(kit=kit, out=out, minutes=minutes, device=device, config=config,
                             overrides=dict(parse_override(text) for text in overrides), init_onnx=init_onnx,
                             continue_from=continue_from, max_steps=max_steps, workers=workers, amp=not no_amp,
                             recipe=recipe)
        summary = train(options)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"{summary['steps']} steps in {summary['train_seconds']} s on {summary['device']} -> {out}")


@cli.command("check")
@click.option("--weights", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("weights"),
              show_default=True, help="Folder with mt2.fp32.onnx and mt2.fp16.onnx.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for infer.json and infer.csv.")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True)
@click.option("--sides", default="1000,3000,10000", show_default=True,
              help="Image sides to time (1 MP, 9 MP, 10,000 x 10,000).")
@click.option("--budget-seconds", type=float, default=240.0, show_default=True,
              help="Time for the whole check; sizes that would not fit are skipped.")
@click.option("--kit", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Run the app through the kit's environment (wheels, stand-ins).")
@click.option("--torch-window", type=int, default=512, show_default=True, help="Window of the PyTorch speed test.")
@click.option("--torch-batch", type=int, default=8, show_default=True)
@click.option("--torch-repeats", type=int, default=20, show_default=True)
def check_command(weights, out, device, sides, budget_seconds, kit, torch_window, torch_batch, torch_repeats) -> None:
    """fp16 parity on the CUDA provider and per-image times of python -m app predict against the tolerances."""
    if kit is not None:
        from training.gpu_kit.env import prepare

        prepare(kit)
    from training.gpu_kit.infer_check import CheckOptions, check, parse_sides, summary_lines

    try:
        options = CheckOptions(weights=weights, out=out, device=device, sides=parse_sides(sides),
                               budget_s=budget_seconds, kit=kit, torch_window=torch_window, torch_batch=torch_batch,
                               torch_repeats=torch_repeats)
        report = check(options)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    for line in summary_lines(report):
        click.echo(line)


@cli.command("predict", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--kit", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def predict_command(kit, args) -> None:
    """python -m app predict ARGS, in the kit's environment (for machines without imagecodecs)."""
    from training.gpu_kit.env import prepare

    prepare(kit)
    from app.cli import cli as app_cli

    app_cli.main(args=["predict", *args], prog_name="app", standalone_mode=True)


@cli.command("split")
@click.option("--src", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dest", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--part-mib", type=click.FloatRange(min=0, min_open=True), default=LIMITS.return_file_mib,
              show_default=True, help="Largest file; larger ones go as NAME.part00, NAME.part01, ...")
def split_command(src, dest, part_mib) -> None:
    """Copy a run folder's files to DEST, splitting those above --part-mib."""
    from training.gpu_kit.transport import split_for_return

    for path in split_for_return(src, dest, int(part_mib * MIB)):
        click.echo(str(path))


@cli.command("join")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
def join_command(folder) -> None:
    """Rebuild each NAME of FOLDER from NAME.part00, NAME.part01, ... and check it against NAME.sha256."""
    from training.gpu_kit.transport import join_parts

    try:
        for path in join_parts(folder):
            click.echo(f"joined {path}")
    except ValueError as error:
        raise click.ClickException(str(error)) from None


if __name__ == "__main__":
    cli()
