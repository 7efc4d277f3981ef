"""Make training and the app importable where the kit runs, before anything imports them.

A stock PyTorch machine lacks two pinned packages of training (`layout.CARRIED`): their wheels, carried in
the kit, are installed once into the kit's `site/` folder with `pip install --no-index --no-deps --target`
(no network) and put first on the import path, of this process and (through PYTHONPATH) of its children.
The app's reader imports imagecodecs for 16-bit colour PNG files; where it is missing, a stand-in decodes
PNG through Pillow and refuses the one case Pillow would get wrong. The kit reads no PNG file (its data is
packed, the timing images are TIFF), so nothing depends on the stand-in beyond the import.
"""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import types
from pathlib import Path

from training.gpu_kit.layout import CARRIED, LAYOUT

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_TYPES = (2, 6)  # RGB and RGBA in the IHDR chunk
STAND_IN = "imagecodecs"


def missing(modules: list[str] | tuple[str, ...]) -> list[str]:
    """The modules that cannot be imported here."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def on_path(folder: Path) -> None:
    """`folder` first on the import path of this process and of the processes it starts."""
    text = str(Path(folder).resolve())
    if text not in sys.path:
        sys.path.insert(0, text)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != text]
    os.environ["PYTHONPATH"] = os.pathsep.join([text, *paths])
    importlib.invalidate_caches()


def install_wheels(kit: Path) -> list[str]:
    """Install the kit's wheels into `kit/site` when a carried package is missing here; the modules installed."""
    need = missing(list(CARRIED))
    site = Path(kit) / LAYOUT.site
    if need and site.is_dir():
        on_path(site)  # installed by an earlier run
        need = missing(list(CARRIED))
    if not need:
        return []
    wheels = sorted((Path(kit) / LAYOUT.wheels).glob("*.whl"))
    if not wheels:
        raise FileNotFoundError(f"{Path(kit).name}: no wheels for {', '.join(need)} in {LAYOUT.wheels}/")
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--disable-pip-version-check", "--target", str(site), *map(str, wheels)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"installing the kit's wheels failed: {tail}")
    on_path(site)
    still = missing(need)
    if still:
        raise RuntimeError(f"{', '.join(still)} still missing after installing the kit's wheels")
    return need


def png_decode(data: bytes) -> object:
    """PNG bytes to an array through Pillow (8-bit images and 16-bit grey); 16-bit colour is refused, since
    Pillow would drop its low bits."""
    import numpy as np
    from PIL import Image

    if data[:8] != PNG_SIGNATURE or len(data) < 26:
        raise ValueError("not a PNG file")
    if data[24] == 16 and data[25] in PNG_COLOUR_TYPES:
        raise ValueError("16-bit colour PNG needs imagecodecs, which is not installed here")
    with Image.open(io.BytesIO(data)) as opened:
        if opened.mode == "P":
            return np.asarray(opened.convert("RGBA" if "transparency" in opened.info else "RGB"))
        return np.asarray(opened.convert("L") if opened.mode == "1" else opened)


def stand_in_imagecodecs() -> bool:
    """Register the PNG stand-in as `imagecodecs` when the real package is missing; True if it was needed."""
    if sys.modules.get(STAND_IN) is not None or not missing([STAND_IN]):
        return False
    module = types.ModuleType(STAND_IN, "Stand-in for imagecodecs: PNG decoding through Pillow (training.gpu_kit).")
    setattr(module, "png_decode", png_decode)
    sys.modules[STAND_IN] = module
    return True


def worker_setup() -> None:
    """What a worker process needs before it unpickles its jobs (the `initializer` of the kit's process pools):
    the stand-in, since a spawned interpreter starts without the parent's modules (the wheels' folder reaches it
    through PYTHONPATH)."""
    stand_in_imagecodecs()


def prepare(kit: Path) -> dict[str, object]:
    """Wheels installed and on the path, the stand-in registered where needed; what was done, for the log."""
    installed = install_wheels(kit)
    stood_in = stand_in_imagecodecs()
    return {"installed": installed, "stand_ins": [STAND_IN] if stood_in else []}


__all__ = ["install_wheels", "missing", "on_path", "png_decode", "prepare", "stand_in_imagecodecs", "worker_setup"]
