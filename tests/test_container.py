"""The challenge container, built from this repository and run by a real Docker engine.

One session builds the image on a local Debian base (see tests/docker_engine.py), then runs it the two ways
the README gives (`... mt2 predict.sh` and the organisers' `... /bin/bash -c "sh predict.sh"`) with no
network, on output folders owned by a host user and by root, on a folder with a corrupt file, and through
`python -m app timing`. Everything it starts (containers, images, the engine) is removed at the end.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

from app.protocol import CSV_HEADER, NAME_PREFIX
from app.reader import list_inputs
from app.writer import output_name
from tests.docker_engine import Engine, base_key, docker, image_size, import_base, require_tools

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[1]
SAMPLE_IMAGES = REPO / "samples"
SAMPLE_LABELS = REPO / "samples" / "labels"
RUN_TAG = f"{os.getpid()}"
BASE_IMAGE = f"mt2-test-base:{base_key()}"
APP_IMAGE = f"mt2-test:{RUN_TAG}"
CONTAINER_PREFIX = f"mt2-test-{RUN_TAG}"
HOST_USER_UID = 4321
MAX_SIZE_ABOVE_BASE = 1.5e9
LABEL_DTYPES = (np.uint16, np.uint32)
EXIT_IMAGE_FAILED = 1
CORRUPT_NAME = "broken_01.png"
CORRUPT_BYTES = b"\x89PNG\r\n\x1a\n" + b"not a real image" * 8
# Folders besides the whole sample set, each a few samples (one image costs seconds on a CPU).
FEW_SAMPLES = 2


def _sample_names() -> list[str]:
    images, _ = list_inputs(SAMPLE_IMAGES)
    return [path.name for path in images]


def _folder(root: Path, name: str, samples: list[str], corrupt: bool = False) -> Path:
    """A world-readable input folder holding copies of `samples` (and a corrupt PNG), like a user's folder."""
    folder = root / name
    folder.mkdir()
    folder.chmod(0o755)
    for sample in samples:
        shutil.copyfile(SAMPLE_IMAGES / sample, folder / sample)
    if corrupt:
        (folder / CORRUPT_NAME).write_bytes(CORRUPT_BYTES)
    return folder


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`all`: every sample image; `few`: the first samples; `mixed`: one sample and a corrupt file."""
    names = _sample_names()
    assert len(names) >= FEW_SAMPLES, f"{SAMPLE_IMAGES} holds {len(names)} images"
    root = tmp_path_factory.mktemp("container-inputs")
    return {
        "all": _folder(root, "all", names),
        "few": _folder(root, "few", names[:FEW_SAMPLES]),
        "mixed": _folder(root, "mixed", names[:1], corrupt=True),
    }


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    require_tools()
    running = Engine()
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def app_image(engine: Engine) -> Iterator[str]:
    """The image built from the repository on the local base; removed afterwards with its containers."""
    imported = import_base(BASE_IMAGE)
    try:
        docker(
            "build", "--force-rm", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", APP_IMAGE,
            str(REPO),
        )
        yield APP_IMAGE
    finally:
        for prefix in (CONTAINER_PREFIX, f"{NAME_PREFIX}-"):
            leftovers = docker("ps", "-aq", "--filter", f"name={prefix}", check=False).stdout.split()
            if leftovers:
                docker("rm", "-f", *leftovers, check=False)
        docker("image", "rm", "-f", APP_IMAGE, check=False)
        if imported:
            docker("image", "rm", "-f", BASE_IMAGE, check=False)


def _run(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`docker container run --rm --network none` with a name this session cleans up."""
    return docker("container", "run", "--rm", "--network", "none", "--name", f"{CONTAINER_PREFIX}-{name}", *args,
                  check=False)


def _mounts(inputs: Path, outputs: Path) -> list[str]:
    return ["-v", f"{inputs}/:/workspace/inputs/", "-v", f"{outputs}/:/workspace/outputs/"]


def _check_labels(outputs: Path, inputs: Path) -> None:
    """Every sample of `inputs` has its label file: the right name, the image's shape, an integer type, and
    labelled pixels on the cells of the sample's ground truth."""
    for image in list_inputs(inputs)[0]:
        if image.name == CORRUPT_NAME:
            continue
        name = output_name(image)
        path = outputs / name
        assert path.is_file(), f"{name} missing; {outputs.name} holds {sorted(p.name for p in outputs.iterdir())}"
        labels, truth = tifffile.imread(path), tifffile.imread(SAMPLE_LABELS / name)
        assert labels.shape == truth.shape, f"{name}: shape {labels.shape}, expected {truth.shape}"
        assert labels.dtype in LABEL_DTYPES, f"{name}: dtype {labels.dtype}"
        if truth.any():
            assert labels[truth > 0].any(), f"{name}: no cell found where the ground truth has cells"


def _owners(folder: Path) -> set[int]:
    return {path.stat().st_uid for path in folder.iterdir()}


def test_image_size_above_base_is_under_target(app_image: str) -> None:
    above = image_size(app_image) - image_size(BASE_IMAGE)
    assert 0 < above < MAX_SIZE_ABOVE_BASE, f"image adds {above / 1e9:.2f} GB to its base"


def test_image_layout_runs_unprivileged_without_training_code(app_image: str) -> None:
    probe = (
        "set -e; id -u; pwd; command -v predict.sh; test -d inputs; test -d outputs; test -f predict.sh; "
        "test -d weights; test ! -e tests; test ! -e training; test ! -e .git; test ! -e app/protocol.py; "
        "python3 -c 'import importlib.util as u, sys; sys.exit(u.find_spec(\"torch\") is not None)'"
    )
    done = _run("layout", app_image, "/bin/sh", "-c", probe)
    assert done.returncode == 0, done.stdout
    uid, workdir, on_path = done.stdout.split()[:3]
    assert uid != "0"
    assert workdir == "/workspace"
    assert on_path == "/usr/local/bin/predict.sh"


def test_user_invocation_writes_as_the_output_folders_owner(
    app_image: str, inputs: dict[str, Path], tmp_path: Path
) -> None:
    outputs = tmp_path / "out"
    outputs.mkdir()
    if os.geteuid() == 0:
        os.chown(outputs, HOST_USER_UID, HOST_USER_UID)
    owner = outputs.stat().st_uid
    done = _run("user", *_mounts(inputs["all"], outputs), app_image, "predict.sh")
    assert done.returncode == 0, done.stdout
    _check_labels(outputs, inputs["all"])
    assert _owners(outputs) == {owner}


def test_official_invocation_with_an_output_folder_docker_creates_as_root(
    app_image: str, inputs: dict[str, Path], tmp_path: Path
) -> None:
    outputs = tmp_path / "outputs"  # absent: the engine creates it, owned by root
    done = _run("official", "-m", "28g", *_mounts(inputs["few"], outputs), app_image,
                "/bin/bash", "-c", "sh predict.sh")
    assert done.returncode == 0, done.stdout
    _check_labels(outputs, inputs["few"])
    assert 0 not in _owners(outputs), "label files were written by root"


def test_a_corrupt_file_fails_alone(app_image: str, inputs: dict[str, Path], tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    done = _run("corrupt", *_mounts(inputs["mixed"], outputs), app_image, "/bin/bash", "-c", "sh predict.sh")
    assert done.returncode == EXIT_IMAGE_FAILED, done.stdout
    assert CORRUPT_NAME in done.stdout
    _check_labels(outputs, inputs["mixed"])
    assert not (outputs / output_name(CORRUPT_NAME)).exists()


def test_timing_protocol_runs_one_container_per_image(app_image: str, inputs: dict[str, Path], tmp_path: Path) -> None:
    outputs, table = tmp_path / "outputs", tmp_path / "timing.csv"
    done = subprocess.run(
        [sys.executable, "-m", "app", "timing", "--image", app_image, "--input", str(inputs["mixed"]),
         "--output", str(outputs), "--csv", str(table), "--", "--network", "none"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert done.returncode == EXIT_IMAGE_FAILED, done.stdout
    assert "2 images:" in done.stdout and f"1 failed ({CORRUPT_NAME})" in done.stdout, done.stdout
    with table.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == CSV_HEADER
    assert sorted(row[0] for row in rows[1:]) == sorted(p.name for p in inputs["mixed"].iterdir())
    assert all(float(real) > 0 and float(ranked) >= 0 for _, real, ranked in rows[1:])
    _check_labels(outputs, inputs["mixed"])
