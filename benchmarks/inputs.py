"""Inputs as users have them: the same images in other channel layouts and at other sizes, scored by the app.

    python -m benchmarks.inputs --folders data/real/val/* --images 12
    python -m benchmarks.inputs --folders data/real/val/* --part sizes --flips 1

Part ``layouts`` takes each folder's single-signal (grey) images and saves each one four ways: a 16-bit grey
TIFF, an RGB PNG with an empty red channel (the signal in green and blue), an RGB PNG with the signal in red
only, and a 2-channel channel-first TIFF (the signal and an empty channel). The channel rule
(app/normalize.py) should make them one image to the model: the F1 of the four should agree.

Part ``sizes`` scores each folder's images at their own size and resized by 0.5 and 2 (images with
antialiasing, labels by nearest neighbour), once with adaptive scales (the app's default) and once with MT2's
fixed scales (``--scale-mode fixed``): adaptive scales should hold their F1 when the cells change size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np

from app.metric import evaluate_folders, read_labels
from app.reader import labelled_pairs, read_image
from app.writer import write_labels
from benchmarks.accuracy import check_labelled_folders, emit, folder_name, log, machine, predict_with_app

ROOT = Path(__file__).resolve().parents[1]

LAYOUTS = ("grey16.tif", "rgb_empty_red.png", "red_only.png", "two_channel_chw.tif")
RESIZES = (0.5, 1.0, 2.0)
MODES = ("adaptive", "fixed")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folders", type=Path, nargs="+", required=True, metavar="DIR",
                   help="labelled folders (images/ + labels/)")
    p.add_argument("--part", choices=("layouts", "sizes", "both"), default="both")
    p.add_argument("--images", type=int, default=12, help="images per folder (the first by name; 0: all)")
    p.add_argument("--model", type=Path, default=ROOT / "weights", help="weights folder or ONNX file")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0: its default)")
    p.add_argument("--flips", type=int, default=0, help="the app's --flips (0: the model's manifest)")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                   help="scale modes of part sizes (fixed does not depend on the size estimate)")
    p.add_argument("--work", type=Path, default=None, help="folder for the variants and predictions (default: temp)")
    p.add_argument("--markdown", type=Path, default=None, help="also write the tables to this file")
    args = p.parse_args(argv)
    check_labelled_folders(p, args.folders)
    return args


def pairs(folder: Path, count: int) -> list[tuple[Path, Path]]:
    """The first `count` (all with 0) labelled images of a challenge-layout folder, as (image, label) pairs."""
    found = labelled_pairs(folder / "images", folder / "labels")[0]
    return found[:count] if count else found


def grey_signal(image: np.ndarray) -> np.ndarray | None:
    """The one signal of a grey (or grey-as-RGB) image, else None."""
    if image.ndim == 2:
        return image
    channels = [image[..., c] for c in range(min(3, image.shape[2]))]
    if all(np.array_equal(channels[0], c) for c in channels[1:]):
        return channels[0]
    return None


def grey_pairs(folder: Path, limit: int) -> list[tuple[Path, Path, np.ndarray]]:
    """The first `limit` (0: all) image-label pairs of `folder` whose image is grey, with its one signal."""
    chosen = []
    for image, label in pairs(folder, 0):
        signal = grey_signal(read_image(image, 10**9))
        if signal is not None:
            chosen.append((image, label, signal))
            if len(chosen) == limit:
                break
    return chosen


def save_layout(signal: np.ndarray, layout: str, path: Path) -> Path:
    """Write `signal` (H×W) in one of LAYOUTS; returns the file written."""
    import imageio.v3 as iio
    import tifffile

    u8 = signal if signal.dtype == np.uint8 else (signal / max(1, signal.max()) * 255).astype(np.uint8)
    zero = np.zeros_like(u8)
    target = path.with_name(path.stem + "." + layout.split(".")[-1])
    if layout == "grey16.tif":
        wide = signal.astype(np.uint16) * (257 if signal.dtype == np.uint8 else 1)
        tifffile.imwrite(target, wide, compression="zlib")
    elif layout == "rgb_empty_red.png":
        iio.imwrite(target, np.stack([zero, u8, u8], axis=2))
    elif layout == "red_only.png":
        iio.imwrite(target, np.stack([u8, zero, zero], axis=2))
    else:
        tifffile.imwrite(target, np.stack([signal, np.zeros_like(signal)]), photometric="minisblack",
                         planarconfig="separate")
    return target


def resized_copy(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    from skimage.transform import resize

    h, w = (max(8, int(round(n * factor))) for n in labels.shape)
    img = resize(image, (h, w) + image.shape[2:], order=1, anti_aliasing=factor < 1, preserve_range=True)
    lab = resize(labels, (h, w), order=0, anti_aliasing=False, preserve_range=True).astype(labels.dtype)
    return img.astype(image.dtype), lab


def score(gt: Path, pred: Path) -> float:
    values = [s.f1 for _, s in evaluate_folders(gt, pred)]
    return sum(values) / len(values) if values else float("nan")


def run_layouts(args: argparse.Namespace, work: Path, extra: tuple[str, ...]) -> list[str]:
    lines = ["| folder | images | " + " | ".join(LAYOUTS) + " | spread |", "|---|---:|" + "---:|" * (len(LAYOUTS) + 1)]
    taken: set[str] = set()
    for index, folder in enumerate(args.folders):
        name = folder_name(folder, taken)
        chosen = grey_pairs(folder, args.images)
        if not chosen:
            lines.append(f"| {name} | 0 | " + " | ".join("n/a" for _ in LAYOUTS) + " | n/a |")
            continue
        scores = []
        for layout in LAYOUTS:
            base = work / "layouts" / str(index) / layout.replace(".", "_")
            (base / "images").mkdir(parents=True, exist_ok=True)
            (base / "labels").mkdir(parents=True, exist_ok=True)
            for image, label, signal in chosen:
                save_layout(signal, layout, base / "images" / image.name)
                write_labels(base / "labels" / label.name, read_labels(label))
            predict_with_app(base / "images", base / "pred", args.model, args.threads, "none", extra)
            (base / "pred").mkdir(exist_ok=True)
            scores.append(score(base / "labels", base / "pred"))
            log(f"{name} {layout}: F1 {scores[-1]:.3f}")
        spread = max(scores) - min(scores)
        lines.append(f"| {name} | {len(chosen)} | " + " | ".join(f"{v:.3f}" for v in scores) + f" | {spread:.3f} |")
    return lines


def run_sizes(args: argparse.Namespace, work: Path, extra: tuple[str, ...]) -> list[str]:
    modes = args.modes
    head = " | ".join(f"{mode} ×{factor:g}" for mode in modes for factor in RESIZES)
    drops_head = " | ".join(f"{mode} worst drop" for mode in modes)
    lines = [f"| folder | images | {head} | {drops_head} |",
             "|---|---:|" + "---:|" * (len(modes) * len(RESIZES) + len(modes))]
    taken: set[str] = set()
    for index, folder in enumerate(args.folders):
        name = folder_name(folder, taken)
        chosen = pairs(folder, args.images)
        results: dict[tuple[str, float], float] = {}
        for factor in RESIZES:
            base = work / "sizes" / str(index) / f"x{factor:g}"
            (base / "images").mkdir(parents=True, exist_ok=True)
            (base / "labels").mkdir(parents=True, exist_ok=True)
            for image, label in chosen:
                pixels, labels = read_image(image, 10**9), read_labels(label)
                if factor != 1.0:
                    pixels, labels = resized_copy(pixels, labels, factor)
                import tifffile

                tifffile.imwrite(base / "images" / (image.name.split(".")[0] + ".tif"), pixels, compression="zlib",
                                 photometric="rgb" if pixels.ndim == 3 and pixels.shape[2] in (3, 4) else None)
                write_labels(base / "labels" / label.name, labels)
            for mode in modes:
                pred = base / f"pred_{mode}"
                predict_with_app(base / "images", pred, args.model, args.threads, "none",
                                 (*extra, "--scale-mode", mode))
                pred.mkdir(exist_ok=True)
                results[(mode, factor)] = score(base / "labels", pred)
                log(f"{name} ×{factor:g} {mode}: F1 {results[(mode, factor)]:.3f}")
        drops = " | ".join(f"{max(results[(m, 1.0)] - results[(m, f)] for f in RESIZES):+.3f}" for m in modes)
        cells = " | ".join(f"{results[(m, f)]:.3f}" for m in modes for f in RESIZES)
        lines.append(f"| {name} | {len(chosen)} | {cells} | {drops} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    import tempfile

    args = parse_args(argv)
    started = time.perf_counter()
    extra: tuple[str, ...] = ("--flips", str(args.flips)) if args.flips else ()
    with tempfile.TemporaryDirectory(prefix="inputs-") as temp:
        work = args.work or Path(temp)
        lines: list[str] = []
        try:
            if args.part in ("layouts", "both"):
                lines += ["Channel layouts (F1 of the same grey images saved four ways):", ""]
                lines += run_layouts(args, work, extra) + [""]
            if args.part in ("sizes", "both"):
                lines += ["Sizes (F1 at the images' own size and resized; drop = native minus the worst):", ""]
                lines += run_sizes(args, work, extra) + [""]
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    lines += [f"Date {dt.date.today().isoformat()}; machine: {machine()}; total {time.perf_counter() - started:.0f} s.",
              "Command: `python -m benchmarks.inputs " + " ".join(sys.argv[1:] if argv is None else argv) + "`"]
    emit(lines, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
