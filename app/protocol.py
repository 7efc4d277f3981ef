"""The challenge's official timing protocol: one fresh container per image, wall time around each run.

Every image is copied alone into a fresh input folder and segmented by its own
`docker container run --rm ... IMAGE /bin/bash -c "sh predict.sh"`, so container start, imports and the
model load are paid for every image, as in the organisers' script. The wall time of the whole run is
compared with the challenge tolerance (`app.tolerance`); only the time above it is ranked. A run that leaves
no `<name>_label.tiff` behind, or exits with an error, counts as a failure of that image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from app.config import CHALLENGE, InferenceConfig
from app.errors import InputError
from app.reader import list_inputs, read_image
from app.tolerance import tolerance
from app.writer import output_name, rows_csv, write_text

DOCKER = "docker"
CONTAINER_INPUTS = "/workspace/inputs/"
CONTAINER_OUTPUTS = "/workspace/outputs/"
CONTAINER_COMMAND = ("/bin/bash", "-c", "sh predict.sh")
# The organisers' memory limit; extra docker arguments come after it, so a later -m overrides it.
MEMORY_LIMIT = "28g"
CSV_HEADER = ("Img Name", "Real Running Time", "Rank Running Time")
NAME_PREFIX = "mt2-timing"
# A fresh input folder must be readable by the container's unprivileged user.
SHARED_DIR_MODE = 0o755
SHARED_FILE_MODE = 0o644


class DockerMissing(RuntimeError):
    """The docker client is not on PATH."""


@dataclass(frozen=True)
class TimedRun:
    """One image's container run: wall seconds, its tolerance, and whether it produced its label file."""

    name: str
    seconds: float
    tolerance: float
    exit_code: int
    output_found: bool
    detail: str = ""

    @property
    def penalised(self) -> float:
        """The ranked running time: seconds above the tolerance, never negative."""
        return max(0.0, self.seconds - self.tolerance)

    @property
    def failed(self) -> bool:
        return self.exit_code != 0 or not self.output_found

    @property
    def reason(self) -> str:
        """Why the run failed, on one line ("" when it did not)."""
        parts = [] if self.output_found else [f"no {output_name(self.name)}"]
        if self.exit_code != 0:
            parts.append(f"exit code {self.exit_code}")
        what = ", ".join(parts)
        return f"{what}: {self.detail}" if what and self.detail else what


def docker_command(
    image: str,
    inputs: Path | str,
    outputs: Path | str,
    docker_args: Sequence[str] = (),
    name: str | None = None,
) -> list[str]:
    """The organisers' `docker container run` for one input folder; `docker_args` go after the defaults."""
    command = [DOCKER, "container", "run", "--rm", "-m", MEMORY_LIMIT]
    if name:
        command += ["--name", name]
    command += [*docker_args]
    command += ["-v", f"{Path(inputs).resolve()}/:{CONTAINER_INPUTS}"]
    command += ["-v", f"{Path(outputs).resolve()}/:{CONTAINER_OUTPUTS}"]
    return [*command, image, *CONTAINER_COMMAND]


def image_tolerance(path: Path, cfg: InferenceConfig) -> float:
    """The tolerance of an input image; the smallest one when the file cannot be read."""
    try:
        height, width = read_image(path, cfg.max_pixels).shape[:2]
    except InputError:
        return CHALLENGE.tolerance_seconds
    return tolerance(height, width)


def failure_detail(output: str, name: str) -> str:
    """The container's last line about the image `name`, else its last line at all."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    about = [line for line in lines if name in line]
    return (about or lines or [""])[-1]


def time_one(
    path: Path,
    image: str,
    output_dir: Path,
    docker_args: Sequence[str],
    cfg: InferenceConfig,
    name: str | None = None,
) -> TimedRun:
    """Run the container on `path` alone and time the whole run."""
    expected = output_dir / output_name(path)
    expected.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{NAME_PREFIX}-") as scratch:
        inputs = Path(scratch)
        os.chmod(inputs, SHARED_DIR_MODE)
        copy = Path(shutil.copyfile(path, inputs / path.name))
        os.chmod(copy, SHARED_FILE_MODE)
        command = docker_command(image, inputs, output_dir, docker_args, name)
        start = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        seconds = time.perf_counter() - start
    found = expected.is_file()
    detail = failure_detail(done.stdout, path.name) if done.returncode != 0 or not found else ""
    return TimedRun(path.name, seconds, image_tolerance(path, cfg), done.returncode, found, detail)


def run_protocol(
    image: str,
    input_dir: Path | str,
    output_dir: Path | str,
    docker_args: Sequence[str] = (),
    cfg: InferenceConfig | None = None,
    on_run: Callable[[TimedRun], None] | None = None,
) -> list[TimedRun]:
    """Time every image of `input_dir` in its own container run; labels accumulate in `output_dir`."""
    if shutil.which(DOCKER) is None:
        raise DockerMissing(f"{DOCKER} is not on PATH: the protocol needs the Docker client and a running engine")
    cfg = cfg or InferenceConfig()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    images, _ = list_inputs(input_dir)
    runs: list[TimedRun] = []
    for index, path in enumerate(images):
        run = time_one(path, image, output_dir, docker_args, cfg, f"{NAME_PREFIX}-{os.getpid()}-{index}")
        runs.append(run)
        if on_run:
            on_run(run)
    return runs


def csv_text(runs: Sequence[TimedRun]) -> str:
    """The organisers' table: image name, real running time, ranked (penalised) running time."""
    return rows_csv([CSV_HEADER, *([run.name, f"{run.seconds:.3f}", f"{run.penalised:.3f}"] for run in runs)])


def write_csv(path: Path | str, runs: Sequence[TimedRun]) -> Path:
    return write_text(path, csv_text(runs))


def run_line(run: TimedRun) -> str:
    """One progress line per image."""
    line = (
        f"{run.name}: {run.seconds:.2f} s (tolerance {run.tolerance:.1f} s, penalised {run.penalised:.2f} s)"
    )
    return f"{line} FAILED {run.reason}" if run.failed else line


def summary(runs: Sequence[TimedRun]) -> str:
    """Totals over all images: real and penalised seconds, images over tolerance, failures."""
    total = sum(run.seconds for run in runs)
    ranked = sum(run.penalised for run in runs)
    over = sum(run.penalised > 0 for run in runs)
    failed = [run.name for run in runs if run.failed]
    line = (
        f"{len(runs)} images: {total:.2f} s in all, {ranked:.2f} s penalised, "
        f"{over} over tolerance, {len(failed)} failed"
    )
    return f"{line} ({', '.join(failed)})" if failed else line
