"""A real Docker engine and a registry-free Debian base image for the container tests.

The engine is started (`dockerd --iptables=false --bridge=none`) only when none answers, and stopped again
by whoever started it. No image can be pulled here, so the base is a Debian root file system made with
debootstrap and imported with `docker import`; its tarball is cached between runs, keyed by suite, package
list and month, so CI pays for debootstrap about once a month.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-pip", "python3-venv", "ca-certificates")
CACHE_DIR = Path(os.environ.get("MT2_CACHE_DIR", Path.home() / ".cache" / "mt2"))
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
CA_BUNDLE_IN_ROOTFS = Path("etc/ssl/certs/ca-certificates.crt")
# Left in the root file system by debootstrap and of no use in an image.
ROOTFS_LEFTOVERS = ("var/cache/apt/archives", "var/lib/apt/lists")
REQUIRED_TOOLS = ("docker", "dockerd", "debootstrap")
ENGINE_START_S = 90
ENGINE_STOP_S = 30
POLL_S = 0.5


def require_tools() -> None:
    """Fail (never skip) with the fix when the engine or debootstrap is not installed."""
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"the container test needs {', '.join(missing)}: run `make system-deps` as root "
            "(installs Debian's docker.io and debootstrap)",
            pytrace=False,
        )


def docker(*args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run the docker client; on failure the error names the command and shows its output."""
    done = subprocess.run(
        ["docker", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {done.returncode}:\n{done.stdout[-4000:]}")
    return done


def engine_answers() -> bool:
    return docker("info", check=False, timeout=30).returncode == 0


class Engine:
    """The Docker engine: the running one, or a `dockerd` started here and stopped by `stop()`."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def start(self) -> None:
        if engine_answers():
            return
        handle, name = tempfile.mkstemp(prefix="mt2-dockerd-", suffix=".log")
        self.log_path = Path(name)
        self.process = subprocess.Popen(
            ["dockerd", "--iptables=false", "--bridge=none"],
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        os.close(handle)
        deadline = time.monotonic() + ENGINE_START_S
        while not engine_answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.log_path.read_text(errors="replace")[-3000:]
                self.stop()
                pytest.fail(f"dockerd did not start (it must run as root):\n{log}", pytrace=False)
            time.sleep(POLL_S)

    def stop(self) -> None:
        """Stop the engine if this object started it."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=ENGINE_STOP_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        if self.log_path:
            self.log_path.unlink(missing_ok=True)


def base_key(today: datetime.date | None = None) -> str:
    """Cache key of the base: suite, a digest of the package list, and the month it was made."""
    today = today or datetime.date.today()
    digest = hashlib.sha256(",".join(BASE_PACKAGES).encode()).hexdigest()[:8]
    return f"{SUITE}-{digest}-{today:%Y-%m}"


def base_tarball(cache_dir: Path = CACHE_DIR) -> Path:
    """The cached root file system tarball, made with debootstrap when this month's is missing."""
    tarball = cache_dir / f"base-{base_key()}.tar"
    if tarball.is_file():
        return tarball
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mt2-rootfs-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, str(rootfs)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if done.returncode != 0:
            pytest.fail(f"debootstrap {SUITE} failed (needs root and a Debian mirror):\n{done.stdout[-3000:]}")
        for leftover in ROOTFS_LEFTOVERS:
            for entry in (rootfs / leftover).glob("*"):
                if entry.is_file():
                    entry.unlink()
        # pip inside the build must trust the same certificate authorities as this machine.
        if HOST_CA_BUNDLE.is_file():
            shutil.copyfile(HOST_CA_BUNDLE, rootfs / CA_BUNDLE_IN_ROOTFS)
        partial = tarball.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        partial.replace(tarball)
    for stale in cache_dir.glob(f"base-{SUITE}-*.tar"):
        if stale != tarball:
            stale.unlink()
    return tarball


def image_exists(name: str) -> bool:
    return docker("image", "inspect", name, check=False).returncode == 0


def import_base(name: str) -> bool:
    """Import the cached base as `name`; True when this call created it (and should remove it)."""
    if image_exists(name):
        return False
    tarball = base_tarball()
    with tarball.open("rb") as stream:
        done = subprocess.run(
            ["docker", "import", "-", name], stdin=stream, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    if done.returncode != 0:
        raise AssertionError(f"docker import of {tarball} failed:\n{done.stdout[-3000:]}")
    return True


def image_size(name: str) -> int:
    """Bytes of an image as the engine reports them (all its layers)."""
    return int(docker("image", "inspect", "--format", "{{.Size}}", name).stdout.strip())
