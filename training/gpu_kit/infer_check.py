"""The app on a GPU, checked in one command: fp16 parity on the CUDA provider and per-image times.

1. Environment: torch and its GPU, ONNX Runtime's version and providers, whether the CUDA provider really
   starts (`app.runner.cuda_usable`; the `onnxruntime` package is CPU-only, `onnxruntime-gpu` has CUDA).
2. Parity: the fp16 model against the fp32 model on the export's verification images (`training.parity`:
   random and cell-like, two sizes) through the app's `ModelRunner` on the chosen device: the largest
   probability difference (limit 1e-2) and the worst instance-map F1 after post-processing (limit 0.99).
3. Times: one generated brightfield-like image per size (uncompressed TIFF, `benchmarks.speed.stained_cells`),
   each segmented alone by a fresh `python -m app predict --device DEVICE` process, as the challenge runs one
   container per image: the process's wall time (start-up included) against the image's tolerance
   (10 s up to 1 MP, then 10 s per MP: 10, 90 and 1,000 s for 1 MP, 9 MP and 10,000 × 10,000). The app's own
   report row (its image seconds, start-up, plan) is kept beside it. A size that would not finish inside the
   remaining time budget is skipped and said so.
4. Model speed in PyTorch on the device (bfloat16 and float16 autocast, 512-px windows; float32 on a CPU), which
   holds where no CUDA provider does.

Writes one file, `infer.json`, into the output folder (results come back as few files).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app.config import CONTRACT, InferenceConfig
from app.pipeline import read_report
from app.tolerance import tolerance
from app.writer import write_text
from training.model import ModelConfig

log = logging.getLogger(__name__)

REPORT = "infer.json"


@dataclass(frozen=True)
class CheckOptions:
    """One inference check."""

    weights: Path
    out: Path
    device: str = "cuda"
    sides: tuple[int, ...] = (1000, 3000, 10000)  # 1 MP, 9 MP and the 10,000 × 10,000 image
    budget_s: float = 240.0  # the whole check; sizes that would not fit are skipped
    kit: Path | None = None  # predict runs through the kit's environment (wheels, stand-ins)
    parity_sizes: tuple[tuple[int, int], ...] = ((256, 256), (320, 448))
    torch_window: int = 512
    torch_batch: int = 8
    torch_repeats: int = 20
    torch_model: ModelConfig = ModelConfig()  # the shipped architecture


def environment() -> dict[str, Any]:
    """What the GPU check runs on."""
    import onnxruntime as ort
    import torch

    from app.runner import cuda_usable

    info: dict[str, Any] = {
        "python": sys.version.split()[0], "torch": torch.__version__, "onnxruntime": ort.__version__,
        "ort_providers": ort.get_available_providers(), "ort_cuda_usable": cuda_usable(),
        "torch_cuda": torch.cuda.is_available(), "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def fp16_parity(weights: Path, device: str, sizes: tuple[tuple[int, int], ...],
                cfg: InferenceConfig = InferenceConfig()) -> dict[str, Any]:
    """fp16 against fp32 through the app's runner on `device`: worst probability difference and instance F1."""
    from app.runner import ModelRunner
    from training.parity import FP16_TOLERANCE, MIN_INSTANCE_F1, instance_agreement, max_abs_diff, verification_inputs

    run32 = ModelRunner(Path(weights) / CONTRACT.fp32_file, device=device)
    run16 = ModelRunner(Path(weights) / CONTRACT.fp16_file, device=device)
    cases: list[dict[str, Any]] = []
    worst, f1, cells = 0.0, 1.0, 0
    for name, batch in verification_inputs(sizes):
        out32, out16 = run32.run(batch), run16.run(batch)
        case_f1, case_cells = instance_agreement(out32, out16, cfg)
        diff = max_abs_diff(out32, out16)
        cases.append({"input": name, "fp16_vs_fp32": diff, "instance_f1": case_f1, "cells": case_cells})
        worst, f1, cells = max(worst, diff), min(f1, case_f1), cells + case_cells
    return {
        "providers": {"fp32": run32.provider, "fp16": run16.provider},
        "fp16_vs_fp32": worst, "fp16_instance_f1": f1, "cells": cells,
        "limits": {"fp16_vs_fp32": FP16_TOLERANCE, "fp16_instance_f1": MIN_INSTANCE_F1},
        "passed": bool(worst <= FP16_TOLERANCE and f1 >= MIN_INSTANCE_F1), "cases": cases,
    }


def write_image(side: int, folder: Path) -> Path:
    """A side × side brightfield-like RGB image as an uncompressed TIFF, alone in `folder`."""
    import tifffile

    from benchmarks.speed import stained_cells

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"check_{side}.tif"
    tifffile.imwrite(path, stained_cells(side, side), photometric="rgb")
    return path


def predict_command(input_dir: Path, output_dir: Path, report: Path, weights: Path, device: str,
                    kit: Path | None) -> list[str]:
    """`python -m app predict` for one folder, through the kit's wrapper when a kit is given."""
    args = ["--input", str(input_dir), "--output", str(output_dir), "--model", str(weights), "--device", device,
            "--report", str(report), "--mode", "challenge"]
    if kit is not None:
        return [sys.executable, "-m", "training.gpu_kit", "predict", "--kit", str(kit), "--", *args]
    return [sys.executable, "-m", "app", "predict", *args]


def report_row(report: Path) -> dict[str, str]:
    """The app's report row for the one image it segmented ({} when it wrote none)."""
    rows = read_report(report)
    return rows[0] if rows else {}


def time_image(side: int, work: Path, options: CheckOptions, timeout: float) -> dict[str, Any]:
    """One image segmented by a fresh app process: wall time against its tolerance, and the app's own row."""
    folder = work / f"size_{side}"
    image = write_image(side, folder / "in")
    report = folder / "report.csv"
    command = predict_command(image.parent, folder / "out", report, options.weights, options.device, options.kit)
    row: dict[str, Any] = {"side": side, "megapixels": round(side * side / 1e6, 2), "device": options.device,
                           "tolerance_s": tolerance(side, side)}
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        code, tail = done.returncode, (done.stderr.strip().splitlines() or [""])[-1]
    except subprocess.TimeoutExpired:
        code, tail = -1, f"stopped after {timeout:.0f} s"
    row["wall_s"] = round(time.perf_counter() - started, 2)
    app_row = report_row(report)
    row.update(status="ok" if code == 0 else f"exit {code}", message="" if code == 0 else tail,
               image_s=app_row.get("seconds", ""), startup_s=app_row.get("startup_s", ""),
               scales=app_row.get("scales", ""), plan=app_row.get("plan", ""), cells=app_row.get("cells", ""))
    row["within"] = bool(code == 0 and row["wall_s"] <= row["tolerance_s"])
    image.unlink(missing_ok=True)
    return row


def torch_speed(device: str, window: int, batch: int, repeats: int, config: ModelConfig = ModelConfig(),
                warmup: int = 3) -> dict[str, Any]:
    """Windows per second of the network in PyTorch on `device` (random weights: speed does not depend on them),
    channels-last: under bfloat16 and float16 autocast on a GPU, in float32 on the CPU (whose half-precision
    convolutions are slower than float32 ones)."""
    import torch

    from training.model import MT2Net, ProbabilityModel

    target = torch.device("cuda" if device == "cuda" and torch.cuda.is_available() else "cpu")
    model = ProbabilityModel(MT2Net(config)).eval().to(target).to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, window, window, device=target).contiguous(memory_format=torch.channels_last)
    result: dict[str, Any] = {"device": str(target), "window": window, "batch": batch, "windows_per_s": {}}
    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16} if target.type == "cuda" else {"float32": None}
    for name, dtype in dtypes.items():
        with torch.no_grad(), torch.autocast(target.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            for _ in range(warmup):
                model(x)
            if target.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(repeats):
                model(x)
            if target.type == "cuda":
                torch.cuda.synchronize()
        result["windows_per_s"][name] = round(batch * repeats / (time.perf_counter() - started), 1)
    return result


def time_images(options: CheckOptions, work: Path, started: float) -> list[dict[str, Any]]:
    """`time_image` of each size while the budget lasts (a size with under 30 s, or under its tolerance, left
    is skipped; a running one is stopped when the budget ends)."""
    rows = []
    for side in options.sides:
        left = options.budget_s - (time.perf_counter() - started)
        if left < min(tolerance(side, side), 30.0):
            rows.append({"side": side, "megapixels": round(side * side / 1e6, 2), "device": options.device,
                         "status": "skipped", "message": f"{left:.0f} s left of the budget",
                         "tolerance_s": tolerance(side, side), "within": False})
            continue
        rows.append(time_image(side, work, options, timeout=min(left, 3 * tolerance(side, side))))
        log.info(f"{side}x{side}: {rows[-1]['status']} in {rows[-1]['wall_s']} s (tolerance "
                 f"{rows[-1]['tolerance_s']:.0f} s) {rows[-1]['message']}")
    return rows


def check(options: CheckOptions) -> dict[str, Any]:
    """The whole check; writes infer.json to `options.out` and returns the report."""
    started = time.perf_counter()
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"environment": environment(), "device_asked": options.device}
    device = options.device if options.device != "cuda" or report["environment"]["ort_cuda_usable"] else "cpu"
    if device != options.device:
        report["notice"] = ("ONNX Runtime has no usable CUDA provider here (the onnxruntime-gpu package provides "
                            "it): parity and times were measured on its CPU provider instead")
        log.warning(report["notice"])
    options = replace(options, device=device)
    report["parity"] = fp16_parity(options.weights, device, options.parity_sizes)
    log.info(f"fp16 vs fp32 on {device}: max |diff| {report['parity']['fp16_vs_fp32']:.2e}, instance F1 "
             f"{report['parity']['fp16_instance_f1']:.4f} over {report['parity']['cells']} cells")
    with tempfile.TemporaryDirectory(prefix="mt2-check-") as tmp:
        report["images"] = time_images(options, Path(tmp), started)
    report["torch_model"] = torch_speed(report["device_asked"], options.torch_window, options.torch_batch,
                                        options.torch_repeats, options.torch_model)
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_text(out / REPORT, json.dumps(report, indent=2, default=str) + "\n")
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The few lines worth printing at the end of a check."""
    env = report["environment"]
    lines = [f"{env.get('gpu', 'no GPU')}; torch {env['torch']}; onnxruntime {env['onnxruntime']} "
             f"(CUDA provider usable: {env['ort_cuda_usable']})"]
    parity = report["parity"]
    lines.append(f"fp16 vs fp32 ({parity['providers']['fp16']}): {parity['fp16_vs_fp32']:.2e}, instance F1 "
                 f"{parity['fp16_instance_f1']:.4f} -> {'pass' if parity['passed'] else 'FAIL'}")
    for row in report["images"]:
        lines.append(f"{row['side']}x{row['side']} ({row['megapixels']} MP): {row['status']} "
                     f"{row.get('wall_s', '-')} s of {row['tolerance_s']:.0f} s"
                     + (" within" if row.get("within") else ""))
    speed = report["torch_model"]
    rates = ", ".join(f"{rate} {name}" for name, rate in speed["windows_per_s"].items())
    lines.append(f"PyTorch on {speed['device']}: windows of {speed['window']} px per second: {rates}")
    return lines


def parse_sides(text: str) -> tuple[int, ...]:
    """'1000,3000,10000' -> (1000, 3000, 10000); each side at least 64 px."""
    sides = tuple(int(part) for part in text.split(",") if part.strip())
    if not sides or min(sides) < 64:
        raise ValueError(f"image sides {text!r}: give comma-separated sides of at least 64 px")
    return sides


__all__ = [
    "CheckOptions",
    "check",
    "environment",
    "fp16_parity",
    "parse_sides",
    "predict_command",
    "report_row",
    "summary_lines",
    "time_image",
    "time_images",
    "torch_speed",
    "write_image",
]
