"""ONNX Runtime session options for the CPU, chosen by measurement: the model pass under each setting.

    python -m benchmarks.session                      # the shipped fp32 model, 2 threads
    python -m benchmarks.session --model weights/mt2.int8.onnx --repeats 7

Each setting builds its own session of the same model file and times, after one warm-up call, the inputs the
app feeds it: one padded 1024 x 1024 image (a 1 MP image in one pass, `one_pass_max_side`), a batch of four
512 x 512 windows (larger images) and one 544 x 544 input (a 300 x 300 image seen at 1.8x). The median of
`--repeats` calls is reported, with the ratio to the first setting (the app's), and the session's start-up.
Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.runner import resolve_model
from benchmarks.accuracy import machine

ROOT = Path(__file__).resolve().parents[1]
INPUTS: dict[str, tuple[int, int, int]] = {  # name: (batch, height, width)
    "1024 x 1024": (1, 1024, 1024),
    "4 x 512 x 512": (4, 512, 512),
    "544 x 544": (1, 544, 544),
}


def _base(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    return options


def _extended(threads: int) -> ort.SessionOptions:
    options = _base(threads)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return options


def _no_arena(threads: int) -> ort.SessionOptions:
    options = _base(threads)
    options.enable_cpu_mem_arena = False
    return options


def _no_spin(threads: int) -> ort.SessionOptions:
    options = _base(threads)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _one_thread(threads: int) -> ort.SessionOptions:
    return _base(1)


SETTINGS: dict[str, Callable[[int], ort.SessionOptions]] = {
    "app (all optimisations, arena, spinning)": _base,
    "extended optimisations": _extended,
    "no memory arena": _no_arena,
    "no spinning": _no_spin,
    "one thread": _one_thread,
}


def time_setting(model: Path, options: ort.SessionOptions, repeats: int) -> dict[str, float]:
    """Session start-up and the median seconds of each input after one warm-up call."""
    start = time.perf_counter()
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    result = {"start-up": time.perf_counter() - start}
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    for label, shape in INPUTS.items():
        feed = {name: rng.random((shape[0], 3, shape[1], shape[2]), dtype=np.float32)}
        session.run(None, feed)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - t0)
        result[label] = statistics.median(times)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "weights", help="ONNX file or weights folder")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every setting but 'one thread'")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per input (median kept)")
    args = parser.parse_args(argv)
    model = resolve_model(args.model, "cpu") if args.model.is_dir() else args.model
    results = {label: time_setting(model, make(args.threads), args.repeats) for label, make in SETTINGS.items()}
    columns = ["start-up", *INPUTS]
    first = next(iter(results.values()))
    print(f"model {model.name}; {args.threads} threads; median of {args.repeats}; {machine()}")
    print("| setting | " + " | ".join(f"{c} s" for c in columns) + " | ratio (1024) |")
    print("|---|" + "---:|" * (len(columns) + 1))
    for label, row in results.items():
        ratio = row["1024 x 1024"] / first["1024 x 1024"]
        print(f"| {label} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + f" | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
