"""Speed beside the peers: MT2's network and post-processing per megapixel next to Cellpose 3's and StarDist 2D's.

    make peers-env                                        # once: build/peers-venv (never a project dependency)
    python -m benchmarks.peers                            # 0.25, 1 and 4 MP, median of 3, 2 threads
    python -m benchmarks.peers --sizes 0.05 --repeats 1 --json peers.json

Times, not masks: no pretrained weights can be downloaded, so the peers run their default architectures with
random weights (a network's arithmetic does not depend on its weights) and every post-processing runs on the maps
a perfect network would output for known labels (ours: the training targets; Cellpose: flows and cell
probability from the labels; StarDist: object probability and ray distances from the labels), so its load is
that of a real image of cells.

Per size one fluorescence image comes from the project's generator (`training.synth`, cells of 25-35 px, so
Cellpose's default diameter of 30 px needs no rescaling; sizes above 1024 px repeat a 1024-px patch, as
benchmarks/speed.py does), saved once and read by both sides: RGB as the app normalises it for ours, its grey
version for the peers (StarDist's default config and Cellpose's channels [0, 0] take one channel).

Each side runs in its own fresh interpreter with OMP/MKL/OpenBLAS/numba thread variables set to `--threads`:
ours in this environment (`app.infer.predict_maps` at one scale, one view, fp32, plus int8 when the weights
folder holds mt2.int8.onnx; `app.postprocess.instance_map`), the peers in build/peers-venv
(benchmarks/peers_side.py, which sets the torch and TensorFlow thread pools). The sides exchange JSON files. A
network time is the method's own tiled prediction over the whole, already loaded image; every time is the median
of `--repeats` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from app.runner import INT8_FILE
from benchmarks.peers_side import found, median_seconds, versions
from benchmarks.speed import side_for

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / "build" / "peers-venv" / "bin" / "python"
PEER_SCRIPT = Path(__file__).with_name("peers_side.py")
DEFAULT_SIZES = (0.25, 1.0, 4.0)
DEFAULT_REPEATS = 3
DEFAULT_THREADS = 2
SEED = 2026
PATTERN = 1024  # largest generated patch; larger images repeat it
CELL_DIAMETER = (25.0, 35.0)  # px, around Cellpose's default diameter (30)
OURS_DISTRIBUTIONS = ("onnxruntime-gpu", "onnxruntime", "numpy", "scipy", "scikit-image")
OURS_FP32, OURS_INT8 = "MT2 fp32 (ours)", "MT2 int8 (ours)"
METHOD_ORDER = (OURS_FP32, OURS_INT8, "Cellpose 3 (cyto3 CPnet)", "StarDist 2D (default Config2D)")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
CHILD_QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
TABLE_HEAD = ("method", "MP", "H x W", "network s/MP", "post s/MP", "params", "note")
ERROR_TAIL = 3000  # characters of a failed side's output shown


@dataclass(frozen=True)
class Row:
    """One method at one image size: median seconds of its network pass and of its post-processing over the
    whole image (`post_s` None: the same post-processing as the fp32 row, since int8 changes only the network)."""

    method: str
    height: int
    width: int
    network_s: float
    post_s: float | None
    params: int
    note: str = ""

    @property
    def megapixels(self) -> float:
        return self.height * self.width / 1e6

    @classmethod
    def from_json(cls, item: object) -> Row:
        """A row from a side's JSON, refused with a ValueError when a field is missing or of the wrong kind."""
        if not isinstance(item, dict):
            raise ValueError(f"a result row must be an object, got {item!r}")
        try:
            post = item["post_s"]
            row = cls(method=str(item["method"]), height=int(item["height"]), width=int(item["width"]),
                      network_s=float(item["network_s"]), post_s=None if post is None else float(post),
                      params=int(item["params"]), note=str(item.get("note", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed result row {item!r}: {exc!r}") from exc
        if row.height <= 0 or row.width <= 0 or row.network_s < 0 or (row.post_s is not None and row.post_s < 0):
            raise ValueError(f"result row with impossible sizes or times: {item!r}")
        return row


def parse_side(text: str) -> tuple[list[Row], dict[str, str]]:
    """(rows, package versions) from a side's JSON output: {"versions": {...}, "rows": [...]}."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ValueError("a side's output must be an object with a list of rows")
    versions = data.get("versions", {})
    if not isinstance(versions, dict):
        raise ValueError("'versions' must be an object")
    return [Row.from_json(item) for item in data["rows"]], {str(k): str(v) for k, v in versions.items()}


# --- the images -------------------------------------------------------------------------------------------------


def fluorescence_patch(side: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB image as the app normalises it, int32 exact labels): one side×side fluorescence sample of the
    project's generator, stored as 8-bit RGB."""
    from app.config import InferenceConfig
    from app.normalize import normalize, to_rgb
    from training.synth import SynthConfig, make_sample
    from training.synth.formats import StorageFormat
    from training.synth.params import FluorescenceParams

    params = FluorescenceParams(diameter=CELL_DIAMETER, formats=((StorageFormat(".tif", "uint8", "rgb"), 1.0),))
    sample = make_sample(seed, "labelled", 0, SynthConfig(min_size=side, max_size=side, square_fraction=1.0,
                                                           modalities=(params,)))
    return normalize(to_rgb(sample.image), InferenceConfig()), sample.labels.astype(np.int32)


def repeat_to(rgb: np.ndarray, labels: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The patch repeated to side×side, every copy's cells numbered apart, labels renumbered 1..N after the crop."""
    from skimage.segmentation import relabel_sequential

    p = labels.shape[0]
    reps = -(-side // p)
    offsets = np.arange(reps * reps, dtype=np.int32).reshape(reps, reps) * int(labels.max())
    big = np.tile(labels, (reps, reps))
    big = np.where(big > 0, big + np.repeat(np.repeat(offsets, p, axis=0), p, axis=1), 0)[:side, :side]
    return np.ascontiguousarray(np.tile(rgb, (reps, reps, 1))[:side, :side]), relabel_sequential(big)[0]


def scene(side: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """One size's inputs: `rgb` (ours), `grey` (the peers), known `labels`, and the `cell` and `boundary` maps MT2
    is trained to output for them (`training.targets.make_targets`)."""
    from training.targets import make_targets

    rgb, labels = fluorescence_patch(min(side, PATTERN), seed)
    if side > labels.shape[0]:
        rgb, labels = repeat_to(rgb, labels, side)
    _, cell, boundary = make_targets(labels)
    return {"rgb": rgb, "grey": rgb.max(axis=2), "labels": labels, "cell": cell, "boundary": boundary}


def write_inputs(sizes: list[float], folder: Path) -> list[Path]:
    """One .npz of `scene` per size in `folder`, in the order of `sizes`."""
    paths = []
    for megapixels in sizes:
        side = side_for(megapixels)
        log(f"generating {megapixels:g} MP ({side} x {side})")
        path, data = folder / f"scene_{side}.npz", scene(side)
        np.savez(path, rgb=data["rgb"], grey=data["grey"], labels=data["labels"], cell=data["cell"],
                 boundary=data["boundary"])
        paths.append(path)
    return paths


# --- our side -----------------------------------------------------------------------------------------------------


def ours_models(weights: Path) -> list[tuple[str, Path]]:
    """(row name, file) of the models to time: fp32 always, int8 when the folder holds one."""
    from app.config import CONTRACT

    fp32 = weights / CONTRACT.fp32_file
    if not fp32.is_file():
        raise FileNotFoundError(f"{weights.name}/: no {CONTRACT.fp32_file} to time")
    int8 = weights / INT8_FILE
    return [(OURS_FP32, fp32)] + ([(OURS_INT8, int8)] if int8.is_file() else [])


def onnx_parameters(path: Path) -> int:
    """Number of values stored in the model's initializers (its weights)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(int(np.prod(tensor.dims)) for tensor in graph.initializer)


def ours_rows(inputs: list[dict[str, np.ndarray]], models: list[tuple[str, Path]], threads: int,
              repeats: int) -> list[Row]:
    """Per model and size: the app's model pass (`predict_maps` at scale 1, one view) on the RGB image; for the
    first model also the app's post-processing (`instance_map`, the model's manifest settings) on the maps made
    from the known labels."""
    from app.config import InferenceConfig
    from app.infer import Plan, one_pass_limit, predict_maps
    from app.manifest import postprocess_settings
    from app.postprocess import instance_map
    from app.runner import ModelRunner
    from app.tiling import one_pass_shape

    rows = []
    for index, (name, path) in enumerate(models):
        cfg = InferenceConfig().with_overrides(**postprocess_settings(path), device="cpu", threads=threads)
        runner, params = ModelRunner(path, "cpu", threads), onnx_parameters(path)
        plan = Plan((1.0,), cfg.stride)
        for data in inputs:
            rgb, labels = data["rgb"], data["labels"]
            timings: dict[str, float] = {}

            def run_network() -> None:
                timings.clear()
                predict_maps(rgb, runner, plan, cfg, timings)

            network = median_seconds(run_network, repeats)
            h, w = labels.shape
            note = ("one pass" if one_pass_shape(h, w, one_pass_limit(runner, cfg)) is not None
                    else f"{cfg.window}-px windows, stride {cfg.stride}")
            note += f", model calls {timings.get('model', 0.0) / max(sum(timings.values()), 1e-9):.0%}"
            post: float | None = None
            if index == 0:
                masks: list[np.ndarray] = []

                def run_post() -> None:
                    masks[:] = [instance_map(data["cell"], data["boundary"], cfg)]

                post = median_seconds(run_post, repeats)
                note += f"; {found(masks[0], labels)}"
            else:
                note += f"; post-processing as {OURS_FP32}"
            rows.append(Row(name, int(h), int(w), network, post, params, note))
    return rows


def ours_child(inputs: list[Path], weights: Path, threads: int, repeats: int, out: Path) -> None:
    """Our side in its own interpreter: time the models and write the rows as JSON."""
    data = [dict(np.load(path)) for path in inputs]
    rows = ours_rows(data, ours_models(weights), threads, repeats)
    out.write_text(json.dumps({"versions": versions(OURS_DISTRIBUTIONS), "rows": [asdict(r) for r in rows]}, indent=1))


# --- running the sides --------------------------------------------------------------------------------------------


def child_env(threads: int) -> dict[str, str]:
    """This environment with every thread-pool variable set to `threads` and TensorFlow's chatter and GPUs off."""
    env = dict(os.environ)
    env.update({name: str(threads) for name in THREAD_VARIABLES})
    env.update(CHILD_QUIET)
    return env


def run_side(command: list[str], out: Path, threads: int) -> tuple[list[Row], dict[str, str]]:
    """Run one side to completion and read its JSON; its output is shown only when it fails."""
    done = subprocess.run(command, cwd=ROOT, env=child_env(threads), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} ... failed ({done.returncode}):\n"
                           f"{(done.stdout + done.stderr)[-ERROR_TAIL:]}")
    return parse_side(out.read_text())


def ours_command(inputs: list[Path], args: argparse.Namespace, out: Path) -> list[str]:
    return [sys.executable, "-m", "benchmarks.peers", "--weights", str(args.weights), "--threads", str(args.threads),
            "--repeats", str(args.repeats), "--child-out", str(out), *map(str, inputs)]


def peers_command(python: Path, inputs: list[Path], args: argparse.Namespace, out: Path) -> list[str]:
    return [str(python), str(PEER_SCRIPT), "--threads", str(args.threads), "--repeats", str(args.repeats),
            "--out", str(out), *map(str, inputs)]


# --- report -------------------------------------------------------------------------------------------------------


def format_params(count: int) -> str:
    return f"{count / 1e6:.2f} M"


def table(rows: list[Row]) -> str:
    """Markdown table, one line per size and method (sizes ascending, ours first)."""
    order = {name: i for i, name in enumerate(METHOD_ORDER)}
    lines = ["| " + " | ".join(TABLE_HEAD) + " |", "|---|---:|---|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r.height * r.width, order.get(r.method, len(order)), r.method)):
        post = "=" if r.post_s is None else f"{r.post_s / r.megapixels:.3f}"
        cells = (r.method, f"{r.megapixels:.3g}", f"{r.height} x {r.width}", f"{r.network_s / r.megapixels:.3f}",
                 post, format_params(r.params), r.note)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header(threads: int, repeats: int, versions: dict[str, dict[str, str]]) -> list[str]:
    """What was compared and on what: the CPU count, the thread setting, the versions of each side."""
    cpu = platform.processor() or platform.machine()
    lines = [
        "Speed beside the peers: times, not masks (the peers run untrained, random weights; every post-processing "
        "runs on maps made from known labels).",
        f"Machine: {os.cpu_count()} CPUs ({cpu}); {threads} threads per method (torch, TensorFlow and ONNX Runtime "
        f"intra-op; OMP/MKL/OpenBLAS/numba); median of {repeats} after a warm-up; s/MP = seconds per megapixel.",
    ]
    for side, found_versions in versions.items():
        lines.append(f"{side}: " + ", ".join(f"{name} {v}" for name, v in found_versions.items()))
    return lines


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_sizes(text: str) -> list[float]:
    sizes = [float(s) for s in text.split(",") if s.strip()]
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive megapixels, got {text!r}")
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_sizes, default=list(DEFAULT_SIZES),
                        help="comma-separated megapixels of the square images (default: 0.25,1,4)")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="timed runs per measurement (median)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="threads for every method")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write every row and version as JSON")
    parser.add_argument("--weights", type=Path, default=ROOT / "weights", help="our weights folder")
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("inputs", type=Path, nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_out is not None:
        ours_child(args.inputs, args.weights, args.threads, args.repeats, args.child_out)
        return 0
    if not PEERS_PYTHON.is_file():
        print(f"error: no peers environment ({PEERS_PYTHON.relative_to(ROOT)}): run `make peers-env` first",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        folder = Path(tmp)
        inputs = write_inputs(args.sizes, folder)
        try:
            log("timing ours")
            ours, ours_found = run_side(ours_command(inputs, args, folder / "ours.json"), folder / "ours.json",
                                        args.threads)
            log("timing the peers")
            peers, peers_found = run_side(peers_command(PEERS_PYTHON, inputs, args, folder / "peers.json"),
                                          folder / "peers.json", args.threads)
        except (RuntimeError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    rows, versions = ours + peers, {"ours": ours_found, "peers": peers_found}
    print("\n".join(header(args.threads, args.repeats, versions)))
    print()
    print(table(rows))
    if args.json is not None:
        report = {"cpus": os.cpu_count(), "threads": args.threads, "repeats": args.repeats, "sizes": args.sizes,
                  "compared": "times, not masks (untrained peers)", "versions": versions,
                  "rows": [asdict(r) for r in rows]}
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
