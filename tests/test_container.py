"""The challenge container, built from this repository and run by a real Docker engine.

One session builds the image on a local Debian base (see tests/docker_engine.py), then runs it the two ways
the README gives (`... mt2 predict.sh` and the organisers' `... /bin/bash -c "sh predict.sh"`) with no
network, on output folders owned by a host user and by root, on a folder with a corrupt file, and through
`python -m app timing`. Everything it starts (containers, images, the engine) is removed at the end.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from app.protocol import CSV_HEADER, NAME_PREFIX
from app.writer import output_name
from tests.docker_engine import Engine, base_key, docker, image_size, import_base, require_tools
from tests.onnx_models import disc_image

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[1]
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

# Test images: bright discs ("cells") on black, one 8-bit gray PNG and one 16-bit RGB TIFF.
DISC_RADIUS = 18
SAMPLES = {
    "cell_00001.png": ((240, 320), [(60, 70), (120, 200), (190, 90)]),
    "cell_00002.tif": ((256, 224), [(64, 64), (180, 150)]),
}


def _write_sample(path: Path, shape: tuple[int, int], centres: list[tuple[int, int]]) -> None:
    gray = disc_image(shape, centres, DISC_RADIUS)
    if path.suffix == ".png":
        Image.fromarray(gray).save(path)
    else:
        rgb = np.repeat(gray[..., None].astype(np.uint16) * 257, 3, axis=2)
        tifffile.imwrite(path, rgb, photometric="rgb")


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`good`: the sample images; `mixed`: one sample and a corrupt file. World-readable, like a user's folder."""
    root = tmp_path_factory.mktemp("container-inputs")
    folders = {"good": root / "good", "mixed": root / "mixed"}
    for folder in folders.values():
        folder.mkdir()
        folder.chmod(0o755)
    for name, (shape, centres) in SAMPLES.items():
        _write_sample(folders["good"] / name, shape, centres)
    first = next(iter(SAMPLES))
    _write_sample(folders["mixed"] / first, *SAMPLES[first])
    (folders["mixed"] / CORRUPT_NAME).write_bytes(CORRUPT_BYTES)
    return folders


@pytest.fixture(scope="session")
def engine() -> Engine:
    require_tools()
    running = Engine()
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def app_image(engine: Engine) -> str:
    """The image built from the repository on the local base; removed afterwards with its containers."""
    imported = import_base(BASE_IMAGE)
    try:
        docker("build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", APP_IMAGE, str(REPO))
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
    return docker("container", "run", "--rm", "--network", "none", "--name", f"{CONTAINER_PREFIX}-{name}", *args, check=False)


def _mounts(inputs: Path, outputs: Path) -> list[str]:
    return ["-v", f"{inputs}/:/workspace/inputs/", "-v", f"{outputs}/:/workspace/outputs/"]


def _check_labels(folder: Path, names: list[str]) -> None:
    """Every sample has its label file: the right name, the image's shape, an integer type, a cell on each disc."""
    for name in names:
        shape, centres = SAMPLES[name]
        path = folder / output_name(name)
        assert path.is_file(), f"{path.name} missing; folder holds {sorted(p.name for p in folder.iterdir())}"
        labels = tifffile.imread(path)
        assert labels.shape == shape, f"{path.name}: shape {labels.shape}, expected {shape}"
        assert labels.dtype in LABEL_DTYPES, f"{path.name}: dtype {labels.dtype}"
        on_discs = [int(labels[y, x]) for y, x in centres]
        assert all(on_discs), f"{path.name}: a disc centre is background ({on_discs})"
        assert len(set(on_discs)) == len(centres), f"{path.name}: discs share labels ({on_discs})"


def _owners(folder: Path) -> set[int]:
    return {path.stat().st_uid for path in folder.iterdir()}


def test_image_size_above_base_is_under_target(app_image: str) -> None:
    above = image_size(app_image) - image_size(BASE_IMAGE)
    assert 0 < above < MAX_SIZE_ABOVE_BASE, f"image adds {above / 1e9:.2f} GB to its base"


def test_image_layout_runs_unprivileged_without_training_code(app_image: str) -> None:
    probe = (
        "set -e; id -u; pwd; command -v predict.sh; test -d inputs; test -d outputs; test -f predict.sh; "
        "test -d weights; test ! -e tests; test ! -e training; test ! -e .git; "
        "python3 -c 'import importlib.util as u, sys; sys.exit(u.find_spec(\"torch\") is not None)'"
    )
    done = _run("layout", app_image, "/bin/sh", "-c", probe)
    assert done.returncode == 0, done.stdout
    uid, workdir, on_path = done.stdout.split()[:3]
    assert uid != "0"
    assert workdir == "/workspace"
    assert on_path == "/usr/local/bin/predict.sh"


def test_user_invocation_writes_as_the_output_folders_owner(app_image: str, inputs: dict[str, Path], tmp_path: Path) -> None:
    outputs = tmp_path / "out"
    outputs.mkdir()
    if os.geteuid() == 0:
        os.chown(outputs, HOST_USER_UID, HOST_USER_UID)
    owner = outputs.stat().st_uid
    done = _run("user", *_mounts(inputs["good"], outputs), app_image, "predict.sh")
    assert done.returncode == 0, done.stdout
    _check_labels(outputs, list(SAMPLES))
    assert _owners(outputs) == {owner}


def test_official_invocation_with_an_output_folder_docker_creates_as_root(
    app_image: str, inputs: dict[str, Path], tmp_path: Path
) -> None:
    outputs = tmp_path / "outputs"  # absent: the engine creates it, owned by root
    done = _run("official", "-m", "28g", *_mounts(inputs["good"], outputs), app_image, "/bin/bash", "-c", "sh predict.sh")
    assert done.returncode == 0, done.stdout
    _check_labels(outputs, list(SAMPLES))
    assert 0 not in _owners(outputs), "label files were written by root"


def test_a_corrupt_file_fails_alone(app_image: str, inputs: dict[str, Path], tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    done = _run("corrupt", *_mounts(inputs["mixed"], outputs), app_image, "/bin/bash", "-c", "sh predict.sh")
    assert done.returncode == EXIT_IMAGE_FAILED, done.stdout
    assert CORRUPT_NAME in done.stdout
    good = [name for name in SAMPLES if (inputs["mixed"] / name).exists()]
    _check_labels(outputs, good)
    assert not (outputs / output_name(CORRUPT_NAME)).exists()


def test_timing_protocol_runs_one_container_per_image(app_image: str, inputs: dict[str, Path], tmp_path: Path) -> None:
    outputs, table = tmp_path / "outputs", tmp_path / "timing.csv"
    done = subprocess.run(
        [sys.executable, "-m", "app", "timing", "--image", app_image, "--input", str(inputs["mixed"]),
         "--output", str(outputs), "--csv", str(table), "--", "--network", "none"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert done.returncode == EXIT_IMAGE_FAILED, done.stdout
    assert "2 images:" in done.stdout and "1 failed (broken_01.png)" in done.stdout, done.stdout
    with table.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == CSV_HEADER
    assert sorted(row[0] for row in rows[1:]) == sorted(p.name for p in inputs["mixed"].iterdir())
    assert all(float(real) > 0 and float(ranked) >= 0 for _, real, ranked in rows[1:])
    _check_labels(outputs, [name for name in SAMPLES if (inputs["mixed"] / name).exists()])
