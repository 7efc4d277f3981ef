"""Command line: ``python -m app predict | evaluate | tune | timing``."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

import click

from app.config import EXTRA_SUFFIXES
from app.modes import DEFAULT_MODE, MODES


@click.group()
@click.version_option(package_name=None, version=__import__("app").__version__)
def cli() -> None:
    """MT2 cell segmentation for multi-modality microscopy."""
    from app.logs import setup_logging

    setup_logging()


# Commands are added below by the modules that own them (predict, evaluate, tune, timing).


# --- predict -----------------------------------------------------------------------------------------------------
# One option per InferenceConfig field, generated from the dataclass so that no default is repeated here;
# unset options stay None and leave the config's default in place (InferenceConfig.with_overrides).

WEIGHTS_ENV = "MT2_WEIGHTS"


class NumberList(click.ParamType):
    """A comma-separated list of numbers, for tuple fields such as `scales` ("0.8,1,1.2")."""

    name = "LIST"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            numbers = tuple(float(part) for part in str(value).split(",") if part.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)
        if not numbers:
            self.fail("needs at least one number", param, ctx)
        return numbers


def _shown(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def config_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate `command` with `--<field>` for every InferenceConfig field (types taken from the defaults)."""
    from dataclasses import fields

    from app.config import InferenceConfig

    for field in reversed(fields(InferenceConfig)):
        default = field.default
        kind = NumberList() if isinstance(default, tuple) else type(default)
        command = click.option(
            f"--{field.name.replace('_', '-')}",
            field.name,
            type=kind,
            default=None,
            help=f"{field.metadata.get('help', '')} [default: {_shown(default)}]".strip(),
        )(command)
    return command


def default_model() -> str:
    """$MT2_WEIGHTS, else the weights/ folder beside the app package."""
    from pathlib import Path

    return os.environ.get(WEIGHTS_ENV) or str(Path(__file__).resolve().parent.parent / "weights")


@cli.command()
@click.option("--input", "input_dir", required=True, help="Folder of images (.png .bmp .jpg .jpeg .tif .tiff).")
@click.option("--output", "output_dir", required=True, help="Folder for <name>_label.tiff files (created if needed).")
@click.option(
    "--model",
    default=None,
    help=f"ONNX model file, or a weights folder (mt2.fp16.onnx for CUDA, mt2.fp32.onnx for CPU). "
    f"[default: ${WEIGHTS_ENV}, else the repository's weights/]",
)
@click.option("--report", default=None, help="Also write the per-image timing table as CSV to this file.")
@click.option("--verbose", "-v", is_flag=True, help="Log plan choices and model details.")
@click.option("--mode", type=click.Choice(list(MODES)), default=None,
              help="; ".join(f"{m.name}: {m.summary}" for m in MODES.values())
              + f". It sets --budget, --flips, --adaptive-spread and --one-pass-max-side; those options given "
              f"here win. [default: {DEFAULT_MODE}; predict.sh: challenge]")
@click.option("--overlay", is_flag=True,
              help=f"Also write <name>{EXTRA_SUFFIXES['overlay']}: cell outlines over the normalised image.")
@click.option("--rois", is_flag=True,
              help=f"Also write <name>{EXTRA_SUFFIXES['rois']}: one ImageJ polygon ROI per cell, named by its label.")
@click.option("--geojson", is_flag=True,
              help=f"Also write <name>{EXTRA_SUFFIXES['geojson']}: one QuPath detection (GeoJSON Polygon) per cell.")
@click.option("--measure", is_flag=True,
              help=f"Also write <name>{EXTRA_SUFFIXES['measure']}: area, centroid, box, diameter, eccentricity and "
                   "mean intensities per cell; the log line adds median area and diameter.")
@config_options
def predict(input_dir: str, output_dir: str, model: str | None, report: str | None, verbose: bool,
            mode: str | None, **options: Any) -> None:
    """Segment every image of --input into one instance-label TIFF per image in --output.

    Exit code 0 when every image (and every extra asked for) was written, 1 when any image or extra failed, 2
    when the run could not start.
    """
    from app.config import InferenceConfig
    from app.errors import ModelError
    from app.logs import setup_logging
    from app.manifest import class_settings, postprocess_settings
    from app.modes import describe_mode, merge_classes, mode_classes, mode_config, without_given
    from app.pipeline import SetupError, run_folder

    setup_logging(verbose)
    extras = [name for name in EXTRA_SUFFIXES if options.pop(name)]  # the rest are config fields
    model = model or default_model()
    try:
        # Settings tuned for these weights (manifest) replace MT2's defaults, the mode's plan fields replace
        # those; options given here win over all three.
        tuned = postprocess_settings(model)
        given = {name for name, value in options.items() if value is not None}
        classes = merge_classes(without_given(class_settings(model), given), mode_classes(mode or DEFAULT_MODE, given))
        try:
            planned = mode_config(InferenceConfig().with_overrides(**tuned), mode or DEFAULT_MODE)
            cfg = planned.with_overrides(**options)
        except ValueError as exc:  # an option the config refuses, e.g. --flips 3
            raise SetupError(str(exc)) from exc
        logging.getLogger(__name__).info(describe_mode(mode or DEFAULT_MODE))
        code = run_folder(input_dir, output_dir, model, cfg, report, extras=extras, classes=classes)
    except (SetupError, ModelError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    sys.exit(code)


@cli.command()
@click.option("--gt", "gt_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Ground-truth folder of <name>_label.tiff files.")
@click.option("--pred", "pred_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Predicted label folder (same file names).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None, help="Also write the table as CSV.")
def evaluate(gt_dir: str, pred_dir: str, csv_path: str | None) -> None:
    """Score predicted <name>_label.tiff files with the challenge F1; the mean F1 is the last line."""
    import csv
    import io
    from pathlib import Path

    from app.errors import InputError
    from app.metric import SCORE_HEADER, evaluate_folders, score_report, score_rows
    from app.writer import write_text

    try:
        results = evaluate_folders(Path(gt_dir), Path(pred_dir))
    except InputError as exc:
        raise click.ClickException(str(exc)) from exc
    if not results:
        raise click.ClickException(f"no *_label.tiff ground-truth files in {gt_dir}")
    lines = score_report(results)
    for line in lines[:-1]:
        click.echo(line)
    if csv_path:
        buffer = io.StringIO()
        csv.writer(buffer).writerows([SCORE_HEADER, *score_rows(results)])
        write_text(csv_path, buffer.getvalue())
    click.echo(lines[-1])


# --- tune --------------------------------------------------------------------------------------------------------


@cli.command()
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Labelled images in the challenge layout: images/ and labels/<name>_label.tiff.")
@click.option("--model", default=None, help="Weights folder or ONNX file. [default: as for predict]")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Use at most this many images (sorted by name).")
@click.option("--write", is_flag=True, help="Store the best thresholds in the weights folder's manifest.json.")
@click.option("--device", default="auto", show_default=True, help="auto, cuda or cpu.")
@click.option("--threads", type=int, default=0, show_default=True, help="ONNX Runtime threads (0: its default).")
@click.option("--target-diameter", type=float, default=None,
              help="Adaptive scales' target object diameter in px, stored with --write. [default: the manifest's, "
                   "else the app's]")
@click.option("--fluorescence-target-diameter", type=float, default=None,
              help="The same for fluorescence images (0: --target-diameter), stored with --write. [default: the "
                   "manifest's, else the app's]")
@click.option("--scale-mode", type=click.Choice(["adaptive", "fixed"]), default="adaptive", show_default=True,
              help="Scales the maps are computed at, as predict would choose them.")
@click.option("--grid", "grid_values", multiple=True, metavar="FIELD=V1,V2,...",
              help="Replace one axis of the search grid (app/config.py TuneGrid), e.g. --grid flips=4 "
                   "--grid cell_thresholds=0.1,0.2; repeatable.")
def tune(data_dir: str, model: str | None, limit: int | None, write: bool, device: str, threads: int,
         target_diameter: float | None, fluorescence_target_diameter: float | None, scale_mode: str,
         grid_values: tuple[str, ...]) -> None:
    """Choose flipped views, scale fusion, T_cell, T_seed, S_min, seed split and S_rel for a model on labelled
    images (never the images you report F1 on).

    The model's maps are computed once per image at the scales predict would choose (adaptive: from each
    image's estimated diameter, found with the manifest's current thresholds; fixed: MT2's) with up to 4 flipped
    views; every combination of the grid is scored with the challenge F1. With --write the best and the target
    diameters go into the manifest, and predict uses them (a short time budget still drops flipped views first);
    the stored settings are then scored once more at the scales their own thresholds estimate, as predict will.
    """
    from pathlib import Path

    from tqdm import tqdm

    from app.config import IMAGE_CLASSES, InferenceConfig
    from app.diameter import describe_scale_rule
    from app.errors import ModelError
    from app.manifest import class_settings, manifest_beside, postprocess_settings, store_postprocess
    from app.reader import labelled_pairs
    from app.runner import ModelRunner, resolve_model
    from app.tune import (
        candidate_settings,
        choice_line,
        class_choices,
        collect_scores,
        confirm_scores,
        current_settings,
        grid_scores,
        parse_grid,
        per_kind,
        rank,
        trials_table,
    )

    data, model_path = Path(data_dir), Path(model or default_model())
    for sub in ("images", "labels"):
        if not (data / sub).is_dir():
            raise click.ClickException(f"{data} has no {sub}/ folder (expected images/ and labels/<name>_label.tiff)")
    pairs = labelled_pairs(data / "images", data / "labels")[0][:limit]
    if not pairs:
        raise click.ClickException(f"no image in {data / 'images'} has a label file in {data / 'labels'}")
    try:
        stored, stored_classes = postprocess_settings(model_path), class_settings(model_path)
        # Thresholds are tuned on the reference (fp32) maps; fp16 and int8 are held to them by their parity checks.
        runner = ModelRunner(resolve_model(model_path, device, "fp32"), device, threads)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    base = InferenceConfig(device=device, threads=threads, scale_mode=scale_mode)
    # The diameter estimate runs with the thresholds predict would use now; the grid then scores every setting.
    # Views and fusion are the grid's to choose; target sizes not given keep the manifest's (with_overrides skips
    # None, so they go on in a second step rather than over the stored values).
    targets = {"target_diameter": target_diameter, "fluorescence_target_diameter": fluorescence_target_diameter}
    cfg = base.with_overrides(**{**stored, "flips": None, "fusion": None}).with_overrides(**targets)
    click.echo(describe_scale_rule(cfg), err=True)
    click.echo(f"model {runner.path.name} ({runner.precision}); {len(pairs)} labelled image(s)", err=True)
    try:
        grid = parse_grid(grid_values)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    # The settings stored now are scored too, at the scales their own thresholds estimate: what predict gives now.
    stored_common = current_settings(base.with_overrides(**stored))
    stored_for = per_kind(stored_common, stored_classes)
    candidates = candidate_settings(base, grid, [stored_for(kind) for kind in IMAGE_CLASSES])
    scored = collect_scores(tqdm(pairs, disable=None, unit="image", leave=False), runner, cfg, candidates,
                            on_error=lambda message: click.echo(f"skipped {message}", err=True))
    if not scored:
        raise click.ClickException("no usable labelled image")
    trials = rank(candidates, scored)
    for line in trials_table(trials, current_settings(base)):
        click.echo(line)
    best = trials[0]
    click.echo("best: " + " ".join(f"--{k.replace('_', '-')} {_shown(v)}" for k, v in best.settings.items())
               + f" (mean F1 {best.f1:.4f} over {len(scored)} images)")
    choices = class_choices(candidates, scored, best.settings, grid)
    for choice in choices:
        click.echo(choice_line(choice))
    kept = {choice.kind: choice.settings for choice in choices if choice.kept}
    if write:
        manifest = manifest_beside(model_path)
        if not manifest.is_file():
            raise click.ClickException(f"{manifest.parent} has no {manifest.name} to store the settings in")
        # Sizes were estimated with the old thresholds; predict will estimate them with the stored ones.
        confirmed = confirm_scores(pairs, runner, cfg.with_overrides(**best.settings),
                                   tqdm(scored, disable=None, unit="image", leave=False), candidates,
                                   per_kind(best.settings, kept))
        f1, now = float(confirmed.f1.mean()), float(grid_scores(scored, candidates, stored_for).mean())
        click.echo(f"as stored, at the scales its thresholds estimate: mean F1 {f1:.4f} over {len(scored)} images "
                   f"({confirmed.moved} of them planned at other scales than in the grid)")
        chosen = best.settings
        if f1 < now:  # a tune never leaves the model worse on its own tuning images than it found it
            click.echo(f"the settings in use before (the manifest's, else MT2's) give {now:.4f} on these images: "
                       "they stay")
            chosen, kept, f1 = stored_common, stored_classes, now
        note = f"{len(scored)} images of {data.name}, mean F1 {f1:.4f}"
        if scale_mode == "adaptive":
            chosen = {**chosen, **{name: getattr(cfg, name) for name in targets}}
        if kept:
            note += "; own thresholds for " + ", ".join(kept) + " images (held-out gain beyond noise)"
        click.echo(f"stored in {store_postprocess(manifest.parent, chosen, note, kept)}")


# --- timing ------------------------------------------------------------------------------------------------------


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--image", default="mt2:latest", show_default=True, help="Docker image to time.")
@click.option("--input", "input_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of images.")
@click.option("--output", "output_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the label files.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), default=None,
              help="Write the organisers' CSV here.")
@click.argument("docker_args", nargs=-1, type=click.UNPROCESSED)
def timing(image: str, input_dir: str, output_dir: str, csv_path: str | None, docker_args: tuple[str, ...]) -> None:
    """Time --image with the challenge protocol: one container run per image, each image alone.

    Arguments after `--` go to `docker container run` (e.g. `-- --gpus device=0`). Exit code 1 when any
    image produced no label file.
    """
    try:
        from app.protocol import DockerMissing, run_line, run_protocol, summary, write_csv
    except ModuleNotFoundError as exc:  # the container image leaves the host-side tool out
        raise click.ClickException("the timing command runs on the host, where it starts the container; "
                                   "this installation does not include it") from exc

    try:
        runs = run_protocol(image, input_dir, output_dir, docker_args, on_run=lambda run: click.echo(run_line(run)))
    except DockerMissing as exc:
        raise click.ClickException(str(exc)) from exc
    if not runs:
        raise click.ClickException(f"no images in {input_dir}")
    if csv_path:
        write_csv(csv_path, runs)
    click.echo(summary(runs))
    sys.exit(1 if any(run.failed for run in runs) else 0)
