"""Stained images as other labs might have stained them: a labelled folder's colour images re-stained in HED space.

    python -m benchmarks.restain --data data/real/tune/dsb2018_stained --out data/restain --strength 0.25
    python -m benchmarks.curve --run runs/restain --model weights --label shipped --folders data/restain

H&E from another lab differs from the training lab's in how much haematoxylin and eosin the tissue took up and
in their hue. Each colour image of `--data` is written `--copies` times, each copy with its haematoxylin, eosin
and DAB optical densities scaled by U(1 - s, 1 + s) and shifted by U(-s, s), s = `--strength` (the training
augmentation's own transform, `training.augment.stain_shift`, with a range of our choosing: Tellez et al. 2019
call 0.05 "light" and 0.2 "strong"). Labels are copied unchanged (a stain changes colour, never where the cells
are). Scoring two models on the copies, paired by image (`benchmarks.curve --model`), says which one holds up
better under stains it has not seen, on images whose own lab it may know. Grey and single-signal images are
skipped: a stain means nothing to them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.normalize import to_rgb
from app.reader import read_image
from app.writer import write_atomic
from benchmarks.accuracy import check_labelled_folders
from benchmarks.inputs import pairs

if TYPE_CHECKING:
    import torch


def stain_tensor(image: np.ndarray) -> torch.Tensor | None:
    """An H×W×3 uint8 image as the 3×H×W float tensor `training.augment.stain_shift` takes; None for an image
    that is not stained colour (`training.augment.stained`): grey, single-signal or 16-bit."""
    import torch

    from training.augment import stained

    if image.dtype != np.uint8:
        return None
    tensor = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()
    return tensor if stained(tensor) else None


def restained(tensor: torch.Tensor, strength: float, rng: np.random.Generator) -> np.ndarray:
    """The colour image `tensor` (`stain_tensor`) with random stain densities (module docstring), H×W×3 uint8."""
    from training.augment import stain_shift
    from training.config import AugmentConfig

    cfg = AugmentConfig(stain_p=1.0, stain_scale=strength, stain_shift=strength)
    out = stain_shift(tensor, rng, cfg).permute(1, 2, 0).numpy()
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    write_atomic(path, lambda handle: Image.fromarray(image).save(handle, format="PNG"))


def restain_folder(data: Path, out: Path, strength: float, copies: int, seed: int) -> int:
    """Write `copies` re-stained copies of every colour image of `data` (with its labels) into `out`; the number
    of images written. Deterministic in `seed`, image by image."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    written = 0
    for index, (image_path, label_path) in enumerate(pairs(data, 0)):
        tensor = stain_tensor(to_rgb(read_image(image_path, 10**9)))
        if tensor is None:
            continue  # no stain to change
        for copy in range(copies):
            stem = f"{image_path.stem}_s{copy}"
            rng = np.random.default_rng([seed, index, copy])
            write_png(out / "images" / f"{stem}.png", restained(tensor, strength, rng))
            shutil.copyfile(label_path, out / "labels" / f"{stem}_label.tiff")
            written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="labelled folders (images/, labels/)")
    parser.add_argument("--out", type=Path, required=True, help="the re-stained labelled folder to write")
    parser.add_argument("--strength", type=float, default=0.25, help="s: densities scaled by 1 ± s, shifted by ± s")
    parser.add_argument("--copies", type=int, default=3, help="re-stained copies of each image")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0.0 <= args.strength < 1.0 or args.copies < 1:
        parser.error("--strength must be in [0, 1) and --copies at least 1")
    check_labelled_folders(parser, args.data)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out}: not empty")
    written = sum(restain_folder(folder, args.out, args.strength, args.copies, args.seed + i)
                  for i, folder in enumerate(args.data))
    print(f"{written} re-stained image(s) (strength {args.strength:g}, {args.copies} per image) in {args.out}. "
          f"Command: `python -m benchmarks.restain {' '.join(sys.argv[1:] if argv is None else argv)}`")
    return 0 if written else 1


if __name__ == "__main__":
    raise SystemExit(main())
