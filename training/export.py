"""Checkpoint to verified ONNX models: `mt2.fp32.onnx` (CPU) and `mt2.fp16.onnx` (GPU), plus manifest.json.

Stages, each a function: pick the teacher (or student) weights from a checkpoint; export `ProbabilityModel`
with the legacy TorchScript exporter (the dynamo exporter needs onnxscript, which training does not install)
at opset 17 with dynamic batch, height and width; simplify with onnxslim when that removes nodes and keeps
parity; convert to fp16 with onnxconverter-common keeping float32 inputs and outputs; check both with
`onnx.checker`; verify through the app's own `ModelRunner`, post-processing and metric; write the manifest.

Verification runs random and cell-like images at two sizes and fails loudly (`ExportCheckError`, naming the
check and the measured value) when fp32 ONNX differs from PyTorch by more than 1e-4, fp16 from fp32 by more
than 1e-2, or the fp16 instance maps match the fp32 ones at an F1 below 0.99. Files are written to a staging
folder and moved into place only when every check passes, so a failed export never replaces good weights.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

import app
from app.config import CHALLENGE, CONTRACT, InferenceConfig
from app.manifest import file_entry, sha256_file, write_manifest
from training.model import ModelConfig, MT2Net, ProbabilityModel, parameter_count
from training.torch_runner import TorchRunner

OPSET = 17
FP32_TOLERANCE = 1e-4  # fp32 ONNX vs PyTorch, max abs difference of probabilities
FP16_TOLERANCE = 1e-2  # fp16 ONNX vs fp32 ONNX, max abs difference of probabilities
MIN_INSTANCE_F1 = 0.99  # fp16 vs fp32 instance maps after MT2 post-processing
# Node-name prefixes kept in fp32, tried in turn when an all-fp16 model fails the parity checks (docs/EXPORT.md).
# The MobileNetV2 encoder carries nearly all of the fp16 error: keeping the decoder (or the heads) in fp32 left
# the shipped real-data checkpoint at 1.03e-2, keeping the encoder removes most of it.
FP32_FALLBACKS: tuple[tuple[str, ...], ...] = (("/net/encoder/",),)
VERIFY_SIZES: tuple[tuple[int, int], ...] = ((256, 256), (320, 448))
SIZE_BUDGET_BYTES = 30_000_000  # files meant for git (weights/) stay below this
WHICH = ("teacher", "student")
VERSION_PACKAGES = (
    "torch",
    "segmentation-models-pytorch",
    "onnx",
    "onnxruntime-gpu",
    "onnxruntime",
    "onnxconverter-common",
    "onnxslim",
    "numpy",
    "scikit-image",
)
DYNAMIC = {0: "N", 2: "H", 3: "W"}


class ExportCheckError(Exception):
    """A verification check failed; the message names the check, the measured value and the limit."""

    def __init__(self, check: str, measured: float, limit: float, detail: str = "") -> None:
        self.check, self.measured, self.limit = check, measured, limit
        extra = f" ({detail})" if detail else ""
        super().__init__(f"export check '{check}' failed: measured {measured:.3g}, limit {limit:.3g}{extra}")


# --- checkpoint ---------------------------------------------------------------------------------------------


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read a training checkpoint on the CPU.

    Checkpoints also hold optimiser and RNG states (numpy objects), so this is a full unpickle: export only
    checkpoints you made or trust.
    """
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise ValueError(f"{Path(path).name}: cannot read checkpoint ({str(exc).splitlines()[0]})") from exc
    if not isinstance(ckpt, dict) or "student" not in ckpt or "model_config" not in ckpt:
        raise ValueError(f"{Path(path).name}: not an MT2 checkpoint (needs 'student' and 'model_config')")
    return ckpt


def network_from_checkpoint(ckpt: dict[str, Any], which: str = "teacher") -> tuple[MT2Net, str, str | None]:
    """Rebuild the network with the chosen weights: (net in eval mode, weights used, notice or None).

    The teacher is the default (the EMA average is less noisy); a checkpoint saved before the teacher started
    falls back to the student with a notice.
    """
    if which not in WHICH:
        raise ValueError(f"--which must be one of {WHICH}, got {which!r}")
    notice = None
    state = ckpt.get(which)
    used = which
    if state is None and which == "teacher":
        state, used = ckpt["student"], "student"
        notice = "checkpoint has no teacher (saved before Mean Teacher started): exporting the student"
    if state is None:
        raise ValueError(f"checkpoint has no {which} weights")
    net = MT2Net(ModelConfig.from_dict(ckpt["model_config"]))
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"{used} weights do not fit the checkpoint's model_config ({first})") from exc
    return net.eval(), used, notice


# --- export, simplify, convert ------------------------------------------------------------------------------


def export_fp32(net: nn.Module, path: Path, opset: int = OPSET, probe_hw: tuple[int, int] = (64, 64)) -> Path:
    """Export ProbabilityModel(net) to ONNX with dynamic N, H, W and the contract's names."""
    wrapper = ProbabilityModel(net).eval()
    dummy = torch.rand(1, CONTRACT.input_channels, *probe_hw)
    names = [CONTRACT.input_name, *CONTRACT.output_names]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter announces itself
        torch.onnx.export(
            wrapper,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[CONTRACT.input_name],
            output_names=list(CONTRACT.output_names),
            dynamic_axes={name: DYNAMIC for name in names},
            do_constant_folding=True,
        )
    return Path(path)


def node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def slim(src: Path, dst: Path) -> Path:
    """Write an onnxslim-simplified copy of `src` to `dst` (constant folding, fused and dead nodes)."""
    import onnx
    import onnxslim

    model = onnxslim.slim(onnx.load(str(src)))
    onnx.save(model, str(dst))
    return dst


def convert_fp16(src: Path, dst: Path, keep_fp32: tuple[str, ...] = ()) -> dict[str, int]:
    """Write fp16 weights and compute with float32 inputs and outputs to `dst` (onnxconverter-common, default
    op block list). Returns how many weights the converter clipped: `small` (|w| < 1e-7, set to +-1e-7) and
    `large` (|w| > 1e4, set to +-1e4); large ones change the model and the parity checks decide if it matters.

    Intermediate shape annotations (value_info, which onnxslim adds) are dropped first: the converter leaves
    some of them typed float32, which makes onnx.checker's type inference reject the graph. Nodes whose names
    start with one of `keep_fp32` stay float32 (the converter's node block list).
    """
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    model.graph.ClearField("value_info")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        blocked = [node.name for node in model.graph.node if keep_fp32 and node.name.startswith(keep_fp32)]
        model = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=blocked or None)
    onnx.save(model, str(dst))
    clipped = {"small": 0, "large": 0}
    for w in caught:
        text = str(w.message)
        if "will be truncated to" in text:
            target = abs(float(text.rsplit(" ", 1)[-1]))
            clipped["small" if target < 1 else "large"] += 1
    return clipped


def check_onnx(path: Path) -> None:
    """onnx.checker with full shape inference on the saved file."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


# --- verification inputs ------------------------------------------------------------------------------------


def random_inputs(h: int, w: int, seed: int, batch: int = 2) -> np.ndarray:
    """Uniform noise in [0, 1]: exercises every weight, but looks like no microscope image."""
    return np.random.default_rng(seed).random((batch, CONTRACT.input_channels, h, w), dtype=np.float32)


def cell_like_inputs(h: int, w: int, seed: int) -> np.ndarray:
    """Three cell-like images (fluorescence, stained brightfield, phase-like), float32 3×3×H×W in [0, 1].

    Cells are blurred ellipses with dome-shaped intensity, touching neighbours, uneven background and noise,
    quantised to uint8 steps like the app's normalised input.
    """
    from skimage.filters import gaussian

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    dome = np.zeros((h, w), np.float32)
    rim = np.zeros((h, w), np.float32)
    n_cells = max(4, (h * w) // 3000)
    for _ in range(n_cells):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        a, b = rng.uniform(7, 22), rng.uniform(7, 22)
        t = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(t) + dy * np.sin(t)) / a
        v = (-dx * np.sin(t) + dy * np.cos(t)) / b
        r2 = u * u + v * v
        inside = r2 <= 1
        dome = np.where(inside, np.maximum(dome, (1 - 0.6 * r2) * rng.uniform(0.5, 1.0)), dome)
        rim = np.maximum(rim, np.exp(-((np.sqrt(r2) - 1) ** 2) / 0.01))
    dome = gaussian(dome, 1.5)
    rim = gaussian(rim, 1.0)
    light = 1 + 0.15 * np.sin(yy / h * np.pi + rng.uniform(0, 3)) * np.cos(xx / w * np.pi)

    def noisy(img: np.ndarray, sigma: float) -> np.ndarray:
        return np.clip(img + rng.normal(0, sigma, img.shape).astype(np.float32), 0, 1)

    fluo = np.stack([np.zeros_like(dome), 0.9 * dome * light, 0.5 * dome * light]) + 0.03
    stain = np.array([0.45, 0.6, 0.35], np.float32)[:, None, None]
    bright = 0.85 * light[None] - stain * dome[None]
    phase = np.repeat((0.45 * light + 0.35 * rim - 0.25 * dome)[None], 3, axis=0)
    batch = np.stack([noisy(fluo, 0.01), noisy(bright, 0.02), noisy(phase, 0.02)])
    batch[0, 0] = 0  # fluorescence in the challenge comes with an empty red channel
    return (np.round(np.clip(batch, 0, 1) * 255) / 255).astype(np.float32)


def verification_inputs(
    sizes: tuple[tuple[int, int], ...] = VERIFY_SIZES, seed: int = 0
) -> list[tuple[str, np.ndarray]]:
    """(name, batch) pairs: random and cell-like images at each size."""
    cases = []
    for k, (h, w) in enumerate(sizes):
        cases.append((f"random {h}x{w}", random_inputs(h, w, seed + k)))
        cases.append((f"cells {h}x{w}", cell_like_inputs(h, w, seed + k)))
    return cases


# --- verification -------------------------------------------------------------------------------------------


def torch_probabilities(net: nn.Module, batch: np.ndarray) -> tuple[np.ndarray, ...]:
    """Reference probabilities (cls, cell, boundary) from PyTorch in float32 on the CPU (the validation runner)."""
    return TorchRunner(net, torch.device("cpu")).run(batch)


def max_abs_diff(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> float:
    """Largest absolute difference over all outputs; NaN anywhere counts as infinite."""
    worst = 0.0
    for x, y in zip(a, b):
        d = np.abs(x.astype(np.float64) - y.astype(np.float64))
        worst = max(worst, float("inf") if not np.all(np.isfinite(d)) else float(d.max()))
    return worst


def instance_agreement(
    reference: tuple[np.ndarray, ...], other: tuple[np.ndarray, ...], cfg: InferenceConfig
) -> tuple[float, int]:
    """Worst F1 of `other`'s instance maps against `reference`'s over a batch, and the reference cell count.

    Both are predictions of the same image, so every cell counts (no border frame). Two empty maps agree
    (F1 1.0); the returned count shows whether the comparison was about any cells at all.
    """
    from app.metric import image_scores
    from app.postprocess import instance_map

    rules = replace(CHALLENGE, border_width=0)
    worst, cells = 1.0, 0
    for i in range(reference[1].shape[0]):
        ref = instance_map(reference[1][i, 0], reference[2][i, 0], cfg)
        got = instance_map(other[1][i, 0], other[2][i, 0], cfg)
        n_ref = int(ref.max(initial=0))
        cells += n_ref
        if n_ref == 0 and int(got.max(initial=0)) == 0:
            continue
        worst = min(worst, image_scores(ref, got, rules).f1)
    return worst, cells


@dataclass
class Parity:
    """Measured agreement of the exported files, per input and overall."""

    fp32_vs_torch: float = 0.0
    fp16_vs_fp32: float = 0.0
    fp16_instance_f1: float = 1.0
    cells_compared: int = 0
    providers: dict[str, str] = field(default_factory=dict)
    cases: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"fp32 vs PyTorch max |diff| {self.fp32_vs_torch:.2e} (limit {FP32_TOLERANCE:g}); "
            f"fp16 vs fp32 max |diff| {self.fp16_vs_fp32:.2e} (limit {FP16_TOLERANCE:g}); "
            f"fp16 instance F1 {self.fp16_instance_f1:.4f} over {self.cells_compared} cells "
            f"(limit {MIN_INSTANCE_F1:g})"
        )


def verify(
    net: nn.Module,
    fp32_path: Path,
    fp16_path: Path,
    sizes: tuple[tuple[int, int], ...] = VERIFY_SIZES,
    device: str = "cpu",
    threads: int = 0,
    cfg: InferenceConfig = InferenceConfig(),
) -> Parity:
    """Run every parity check through the app's ModelRunner; raise ExportCheckError on the first failure."""
    from app.runner import ModelRunner

    run32 = ModelRunner(fp32_path, device=device, threads=threads)
    run16 = ModelRunner(fp16_path, device=device, threads=threads)
    if run32.precision != "fp32" or run16.precision != "fp16":
        raise ExportCheckError("file precision", 0, 0, f"app reads {run32.precision} and {run16.precision}")
    parity = Parity(providers={"fp32": run32.provider, "fp16": run16.provider})
    for name, batch in verification_inputs(sizes):
        ref = torch_probabilities(net, batch)
        out32 = run32.run(batch)
        out16 = run16.run(batch)
        d32, d16 = max_abs_diff(ref, out32), max_abs_diff(out32, out16)
        f1, cells = instance_agreement(out32, out16, cfg)
        parity.cases.append(
            {"input": name, "fp32_vs_torch": d32, "fp16_vs_fp32": d16, "fp16_instance_f1": f1, "cells": cells}
        )
        parity.fp32_vs_torch = max(parity.fp32_vs_torch, d32)
        parity.fp16_vs_fp32 = max(parity.fp16_vs_fp32, d16)
        parity.fp16_instance_f1 = min(parity.fp16_instance_f1, f1)
        parity.cells_compared += cells
        if not d32 <= FP32_TOLERANCE:
            raise ExportCheckError("fp32 ONNX vs PyTorch max abs diff", d32, FP32_TOLERANCE, name)
        if not d16 <= FP16_TOLERANCE:
            raise ExportCheckError("fp16 vs fp32 max abs diff", d16, FP16_TOLERANCE, name)
        if not f1 >= MIN_INSTANCE_F1:
            raise ExportCheckError("fp16 vs fp32 instance-map F1", f1, MIN_INSTANCE_F1, f"{name}, {cells} cells")
    return parity


# --- provenance ---------------------------------------------------------------------------------------------


def package_versions() -> dict[str, str]:
    versions = {}
    for name in VERSION_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    versions["mt2-app"] = app.__version__
    return versions


def git_commit(repo: Path = Path(__file__).resolve().parent.parent) -> str | None:
    """HEAD of the repository this code runs from, with '+dirty' for uncommitted changes; None outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


# --- the whole command ----------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    """What `export_checkpoint` wrote and measured."""

    files: dict[str, int]  # file name -> size in bytes
    parity: Parity
    weights: str
    notices: list[str]
    steps: dict[str, Any]  # what onnxslim and the fp16 converter did
    manifest: Path


def _slim_if_better(raw: Path, net: nn.Module, work: Path, threads: int) -> tuple[Path, dict[str, Any]]:
    """Keep the onnxslim result only when it has fewer nodes, loads in the app and matches PyTorch."""
    from app.errors import ModelError
    from app.runner import ModelRunner

    before = node_count(raw)
    try:
        slimmed = slim(raw, work / "slim.onnx")
        after = node_count(slimmed)
        probe = random_inputs(64, 96, seed=99, batch=1)
        diff = max_abs_diff(torch_probabilities(net, probe), ModelRunner(slimmed, "cpu", threads).run(probe))
    except (ModelError, RuntimeError, ValueError) as exc:
        return raw, {"nodes_before": before, "kept": False, "reason": f"onnxslim failed: {exc}"}
    info = {"nodes_before": before, "nodes_after": after, "probe_max_abs_diff": diff}
    if after < before and diff <= FP32_TOLERANCE:
        return slimmed, {**info, "kept": True}
    return raw, {**info, "kept": False, "reason": "no fewer nodes" if after >= before else "parity lost"}


def _describe_slim(info: dict[str, Any]) -> str:
    if info.get("kept"):
        return f"kept, {info['nodes_before']} -> {info['nodes_after']} nodes"
    return f"not used ({info.get('reason', 'disabled')})"


def export_checkpoint(
    checkpoint: Path | str,
    out_dir: Path | str,
    which: str = "teacher",
    sizes: tuple[tuple[int, int], ...] = VERIFY_SIZES,
    use_slim: bool = True,
    device: str = "cpu",
    threads: int = 0,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Export, verify and document one checkpoint into `out_dir` (see the module docstring)."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    ckpt = load_checkpoint(checkpoint)
    net, used, notice = network_from_checkpoint(ckpt, which)
    notices = [notice] if notice else []
    for line in notices:
        log(f"notice: {line}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as tmp:
        work = Path(tmp)
        raw = export_fp32(net, work / "raw.onnx")
        chosen, slimmed = (_slim_if_better(raw, net, work, threads) if use_slim else (raw, {"kept": False}))
        log(f"onnxslim: {_describe_slim(slimmed)}")
        fp32 = work / CONTRACT.fp32_file
        shutil.move(str(chosen), fp32)
        fp16 = work / CONTRACT.fp16_file
        kept: tuple[str, ...] = ()
        fallbacks = list(FP32_FALLBACKS)
        while True:
            clipped = convert_fp16(fp32, fp16, kept)
            log(f"fp16: weights clipped by the converter: {clipped['small']} tiny (to +-1e-7), "
                f"{clipped['large']} large (to +-1e4)" + (f"; nodes kept in fp32: {', '.join(kept)}" if kept else ""))
            for path in (fp32, fp16):
                check_onnx(path)
            try:
                parity = verify(net, fp32, fp16, sizes, device, threads)
                break
            except ExportCheckError as error:
                if not fallbacks or not error.check.startswith("fp16"):
                    raise
                kept = fallbacks.pop(0)
                log(f"fp16: {error}; converting again with {', '.join(kept)} in fp32")
        log(f"parity: {parity.summary()}")
        if parity.cells_compared == 0:
            note = "instance-map check compared empty maps only (the network finds no cells in the test images)"
            notices.append(note)
            log(f"notice: {note}")
        files = {}
        for path in (fp32, fp16):
            target = out_dir / path.name
            shutil.move(str(path), target)
            files[path.name] = target.stat().st_size
    for name, size in files.items():
        over = " (over the 30 MB budget for weights/ in git)" if size > SIZE_BUDGET_BYTES else ""
        log(f"{name}: {size / 1e6:.1f} MB{over}")
    steps = {"onnxslim": slimmed, "fp16_weights_clipped": clipped, "fp16_nodes_kept_fp32": list(kept)}
    meta = manifest_meta(ckpt, checkpoint, used, notices, parity, steps)
    entries = {
        CONTRACT.fp32_file: {**file_entry(out_dir / CONTRACT.fp32_file), "precision": "fp32", "for": "CPU"},
        CONTRACT.fp16_file: {**file_entry(out_dir / CONTRACT.fp16_file), "precision": "fp16", "for": "CUDA"},
    }
    manifest = write_manifest(out_dir, entries, meta)
    return ExportResult(files, parity, used, notices, steps, manifest)


def portable_config(config: Any) -> Any:
    """The training config with absolute paths cut to their last part: the manifest travels with the weights and
    should not record the layout of the machine that trained them."""
    if isinstance(config, dict):
        return {key: portable_config(value) for key, value in config.items()}
    if isinstance(config, str) and Path(config).is_absolute():
        return Path(config).name
    return config


def manifest_meta(
    ckpt: dict[str, Any], checkpoint: Path, used: str, notices: list[str], parity: Parity, steps: dict[str, Any]
) -> dict[str, Any]:
    """Everything manifest.json records besides the file checksums."""
    config = ModelConfig.from_dict(ckpt["model_config"])
    net_params = parameter_count(MT2Net(config))
    return {
        "model": "MT2 (UNet++ with cls, cell and boundary heads)",
        "contract": {
            "input": CONTRACT.input_name,
            "outputs": list(CONTRACT.output_names),
            "layout": "N x 3 x H x W float32 RGB in [0, 1]; H, W multiples of 32",
            "opset": OPSET,
        },
        "architecture": {**asdict(config), "parameters": net_params},
        "preset": ckpt.get("preset"),
        "weights": used,
        "checkpoint": {
            "file": checkpoint.name,
            "sha256": sha256_file(checkpoint),
            "epoch": ckpt.get("epoch"),
            "step": ckpt.get("step"),
        },
        "data": ckpt.get("data"),
        "started_from": ckpt.get("init_onnx"),
        "training": {"config": portable_config(ckpt.get("config")), "versions": ckpt.get("versions")},
        "validation_metrics": ckpt.get("metrics"),
        "export": {
            "versions": package_versions(),
            "git_commit": git_commit(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **steps,
            "notices": notices,
        },
        "parity": {
            "limits": {
                "fp32_vs_torch": FP32_TOLERANCE,
                "fp16_vs_fp32": FP16_TOLERANCE,
                "fp16_instance_f1": MIN_INSTANCE_F1,
            },
            **asdict(parity),
        },
    }


def verify_directory(
    checkpoint: Path | str,
    out_dir: Path | str,
    which: str = "teacher",
    sizes: tuple[tuple[int, int], ...] = VERIFY_SIZES,
    device: str = "cpu",
    threads: int = 0,
) -> Parity:
    """Re-check exported files against their checkpoint: manifest checksums, onnx.checker, then parity."""
    from app.manifest import verify_model

    out_dir = Path(out_dir)
    fp32, fp16 = out_dir / CONTRACT.fp32_file, out_dir / CONTRACT.fp16_file
    for path in (fp32, fp16):
        if verify_model(path) is None:
            raise ValueError(f"{out_dir}: no {CONTRACT.manifest_file} beside the models")
        check_onnx(path)
    net, _, _ = network_from_checkpoint(load_checkpoint(checkpoint), which)
    return verify(net, fp32, fp16, sizes, device, threads)


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """'256,320x448' -> ((256, 256), (320, 448)); sides must be multiples of 32 (the model contract)."""
    sizes = []
    for part in text.split(","):
        h, _, w = part.strip().lower().partition("x")
        hw = (int(h), int(w or h))
        if min(hw) <= 0 or hw[0] % 32 or hw[1] % 32:
            raise ValueError(f"verification size {part.strip()!r}: sides must be positive multiples of 32")
        sizes.append(hw)
    return tuple(sizes)


__all__ = [
    "ExportCheckError",
    "ExportResult",
    "Parity",
    "cell_like_inputs",
    "convert_fp16",
    "export_checkpoint",
    "export_fp32",
    "load_checkpoint",
    "network_from_checkpoint",
    "parse_sizes",
    "verify",
    "verify_directory",
]
