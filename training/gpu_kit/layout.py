"""The kit's folder layout, its size limits and the wheels it carries, named once.

A kit folder holds `kit.json` (the manifest), `sources/<index>_<folder>.zip` (one archive per packed data
folder), `wheels/` (the pinned packages a stock PyTorch machine lacks) and, once a run has installed them there,
`site/`. The size limits are those of the machine the kit is sent to: the kit itself at most `kit_mib`, and the
repository's working tree plus the kit at most `travel_mib`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.writer import write_text

KIT_VERSION = 1
MIB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "training" / "requirements.txt"


@dataclass(frozen=True)
class KitLayout:
    """File and folder names inside a kit, and member folders inside a source archive."""

    manifest: str = "kit.json"
    sources: str = "sources"
    wheels: str = "wheels"
    site: str = "site"
    archive_suffix: str = ".zip"
    index_member: str = "index.json"
    images_member: str = "images"
    labels_member: str = "labels"


@dataclass(frozen=True)
class Limits:
    """Sizes the kit must respect: its own, the whole transfer's, and each result file's on the way back."""

    kit_mib: float = 48.0
    travel_mib: float = 64.0  # working tree (tracked and untracked, not ignored, files) plus the kit
    margin_mib: float = 0.5  # room left for files added after packing (a note, a test)
    return_file_mib: float = 15.0  # result files come back when at most 16 MiB: larger ones go in parts


# Import name -> distribution name of the packages the kit carries as wheels (their pins come from
# training/requirements.txt). Everything else training and the app import is part of a stock PyTorch image
# (torchvision, timm with huggingface_hub and safetensors, onnx, onnxruntime, numpy, scipy, scikit-image,
# tifffile, imageio, pillow, click, tqdm).
CARRIED: dict[str, str] = {
    "segmentation_models_pytorch": "segmentation-models-pytorch",
    "pytorch_msssim": "pytorch-msssim",
}
WHEEL_TARGET = ("--python-version", "3.12", "--platform", "manylinux2014_x86_64", "--only-binary=:all:")

LAYOUT = KitLayout()
LIMITS = Limits()


def pinned(names: tuple[str, ...] | list[str], requirements: Path = REQUIREMENTS) -> list[str]:
    """`name==version` of each distribution, as pinned in training/requirements.txt; a missing pin is an error."""
    pins: dict[str, str] = {}
    for line in requirements.read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)", line)
        if match:
            pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    missing = [n for n in names if n.lower() not in pins]
    if missing:
        raise ValueError(f"{requirements.name}: no '==' pin for {', '.join(missing)}")
    return [f"{n}=={pins[n.lower()]}" for n in names]


def read_manifest(kit: Path) -> dict[str, Any]:
    """The kit's manifest; a folder without one is refused with a line naming it."""
    path = Path(kit) / LAYOUT.manifest
    if not path.is_file():
        raise FileNotFoundError(f"{Path(kit).name}: not a kit (no {LAYOUT.manifest}; build one with make gpu-kit)")
    manifest: dict[str, Any] = json.loads(path.read_text())
    if manifest.get("version") != KIT_VERSION:
        raise ValueError(f"{path.name}: kit version {manifest.get('version')} (this code reads {KIT_VERSION})")
    return manifest


def write_manifest(kit: Path, manifest: dict[str, Any]) -> Path:
    """kit.json, written atomically."""
    return write_text(Path(kit) / LAYOUT.manifest, json.dumps(manifest, indent=2) + "\n")


__all__ = [
    "CARRIED",
    "KIT_VERSION",
    "LAYOUT",
    "LIMITS",
    "MIB",
    "REPO",
    "KitLayout",
    "Limits",
    "WHEEL_TARGET",
    "pinned",
    "read_manifest",
    "write_manifest",
]
