"""Capacity candidates on this CPU: what a larger encoder or decoder costs to train and to run, side by side.

    python -m benchmarks.capacity                       # the default candidates on the long preset's data
    python -m benchmarks.capacity --steps 10 --candidates "resnet18" "mobilenet_v2 256,128,64,32,16"

For each candidate architecture (encoder name as segmentation_models_pytorch spells it, optionally the decoder
channels) one run measures, with `--threads` threads and nothing else running:
  - parameters;
  - the whole training step as the trainer takes it (the long preset's bf16 + channels-last setting, teacher
    pass, EMA and data included: `benchmarks.training.Bench`), from a seeded random initialisation;
  - ONNX Runtime time of one batch of the app's windows (`InferenceConfig.batch_size` × window², the app's
    session options), fp32 and statically quantised int8 (the app's choice on a CPU with VNNI).
Ratios are against the first candidate, the shipped architecture. A candidate worth training must still keep
the 10,000 × 10,000 slide and 9 MP images inside their tolerance: check its exported weights with
`benchmarks.speed` before shipping it (the inference ratio here says how much room the planner loses).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.peers_side import median_seconds
from benchmarks.training import DEFAULT_FOLDERS, ROOT, Bench
from training.model import ModelConfig

SHIPPED_MODEL = ModelConfig()
SHIPPED = f"{SHIPPED_MODEL.encoder} {','.join(map(str, SHIPPED_MODEL.decoder_channels))}"
DEFAULT_CANDIDATES = (SHIPPED, "mobilenet_v2 256,128,64,32,16", "efficientnet-b0", "resnet18", "resnet34")


def parse_candidate(text: str) -> dict[str, Any]:
    """'resnet18' or 'mobilenet_v2 256,128,64,32,16' -> preset overrides of the model section."""
    parts = text.split()
    if not parts or len(parts) > 2:
        raise ValueError(f"candidate must be 'ENCODER [C1,C2,...]', got {text!r}")
    change: dict[str, Any] = {"model.encoder": parts[0]}
    change["model.decoder_channels"] = ([int(c) for c in parts[1].split(",")] if len(parts) == 2
                                        else list(SHIPPED_MODEL.decoder_channels))
    return change


def inference_seconds(net: Any, window: int, threads: int, repeats: int) -> tuple[float, float]:
    """Seconds of one batch of window² inputs through the exported fp32 and int8 files, app session options."""
    from app.config import InferenceConfig
    from app.runner import ModelRunner
    from training.export import export_fp32
    from training.quantize import QuantSettings, quantize_int8

    cfg = InferenceConfig()
    rng = np.random.default_rng(0)
    batch = rng.random((cfg.batch_size, 3, window, window), dtype=np.float32)
    settings = QuantSettings(method="minmax", crops=8, crop_size=min(window, QuantSettings.crop_size))
    calibration = rng.random((settings.crops, 3, settings.crop_size, settings.crop_size), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="mt2-capacity-") as tmp:
        fp32 = export_fp32(net.eval(), Path(tmp) / "model.fp32.onnx")
        int8 = quantize_int8(fp32, Path(tmp) / "model.int8.onnx", calibration, settings)
        results = []
        for path in (fp32, int8):
            runner = ModelRunner(path, device="cpu", threads=threads)
            results.append(median_seconds(lambda: runner.run(batch), repeats))
    return results[0], results[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", nargs="+", default=list(DEFAULT_CANDIDATES),
                        help="'ENCODER [C1,C2,...]' each; the first is the reference (default: the shipped one)")
    parser.add_argument("--data", action="append", type=Path, help="labelled folder (repeat); default: the "
                        "long preset's four folders of weights/RECIPE.md")
    parser.add_argument("--steps", type=int, default=15, help="timed training steps per candidate")
    parser.add_argument("--untimed", type=int, default=3, help="training steps before timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed inference batches per precision")
    parser.add_argument("--window", type=int, default=0, help="inference window side (default: the app's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a field of the preset for every candidate (e.g. augment.crop=64)")
    args = parser.parse_args(argv)
    import torch

    from app.config import InferenceConfig
    from training.config import parse_override
    from training.model import MT2Net

    folders = args.data or [ROOT / f for f in DEFAULT_FOLDERS]
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        sys.exit(f"data folder not found: {', '.join(missing)} (make them as in weights/RECIPE.md, or pass --data)")
    changes = {text: parse_candidate(text) for text in args.candidates}
    bench = Bench(folders, None, args.threads, dict(parse_override(text) for text in args.overrides))
    window = args.window or InferenceConfig().window
    print(f"# {bench.base.schedule.batch_size} labelled + {bench.base.schedule.unlabelled_batch_size} unlabelled "
          f"crops of {bench.base.augment.crop}² per training step (bf16 {bench.base.runtime.cpu_bf16}, channels last "
          f"{bench.base.runtime.channels_last}); inference: {InferenceConfig().batch_size} windows of {window}²; "
          f"{args.threads} thread(s)")
    header = ("| candidate | parameters (M) | s/training step | vs first | fp32 s/batch | int8 s/batch | "
              "int8 vs first |")
    print(header)
    print("|" + "---|" * header.count(" |"))
    first: tuple[float, float] | None = None
    for text, change in changes.items():
        seconds, _ = bench.run(change, args.steps, args.untimed)
        step = statistics.median(seconds)
        torch.manual_seed(0)
        net = MT2Net(bench.config(change).model)
        parameters = sum(p.numel() for p in net.parameters()) / 1e6
        fp32, int8 = inference_seconds(net, window, args.threads, args.repeats)
        first = first or (step, int8)
        print(f"| {text} | {parameters:.2f} | {step:.3f} | {step / first[0]:.2f}x | {fp32:.3f} | {int8:.3f} | "
              f"{int8 / first[1]:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
