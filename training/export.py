"""Checkpoint to verified ONNX models: `mt2.fp32.onnx` (CPU) and `mt2.fp16.onnx` (GPU), plus manifest.json.

Stages, each a function: pick the teacher (or student) weights from a checkpoint (`training.checkpoint`); export
`ProbabilityModel` with the legacy TorchScript exporter (the dynamo exporter needs onnxscript, which training does
not install) at opset 17 with dynamic batch, height and width; simplify with onnxslim when that removes nodes and
keeps parity; convert to fp16 with onnxconverter-common keeping float32 inputs and outputs (the encoder kept in
fp32 when the all-fp16 file fails parity); check both with `onnx.checker`; verify them (`training.parity`);
quantise the fp32 file to int8 for CPUs, calibrated on training images (`training.quantize`; an int8 file that
fails its parity check is left out with a notice, the rest of the export still lands); write the manifest with
the versions and commit they came from. Files are written to a staging folder and moved into place only when
every check passes, so a failed export never replaces good weights.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import logging
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import app
from app.config import CONTRACT
from app.manifest import file_entry, sha256_file, write_manifest
from app.runner import INT8_FILE
from app.writer import write_atomic
from training.checkpoint import load_checkpoint, network_from_checkpoint
from training.config import ConfigError
from training.model import ModelConfig, MT2Net, ProbabilityModel, parameter_count
from training.parity import (
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    INT8_MIN_INSTANCE_F1,
    MIN_INSTANCE_F1,
    VERIFY_SIZES,
    ExportCheckError,
    Int8Parity,
    Parity,
    max_abs_diff,
    random_inputs,
    torch_probabilities,
    verify,
    verify_int8,
)
from training.quantize import MANIFEST_KEY, CalibrationError, QuantSettings, int8_entry, int8_from_training, with_int8

log = logging.getLogger(__name__)

OPSET = 17
# Node-name prefixes kept in fp32, tried in turn when an all-fp16 model fails the parity checks (docs/EXPORT.md).
# The MobileNetV2 encoder carries nearly all of the fp16 error: keeping the decoder (or the heads) in fp32 left
# the shipped real-data checkpoint at 1.03e-2, keeping the encoder removes most of it.
FP32_FALLBACKS: tuple[tuple[str, ...], ...] = (("/net/encoder/",),)
SIZE_BUDGET_BYTES = 30_000_000  # files meant for git (weights/) stay below this
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
    write_atomic(dst, lambda handle: onnx.save(model, handle))
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
    write_atomic(dst, lambda handle: onnx.save(model, handle))
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
    int8: Int8Parity | None = None  # None: no int8 file (skipped or refused, see notices)


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


def _int8_step(
    fp32: Path, ckpt: dict[str, Any], calibration: Sequence[Path], settings: QuantSettings,
    sizes: tuple[tuple[int, int], ...], threads: int, min_f1: float,
) -> tuple[Int8Parity | None, dict[str, Any]]:
    """The int8 file beside `fp32` and its manifest record, or None and a record of why it was refused (no
    calibration images, an unreadable training config, failed parity): the int8 file is optional, the fp32 and
    fp16 files are not."""
    try:
        return int8_from_training(fp32, fp32.parent / INT8_FILE, calibration, ckpt.get("config"), settings, sizes,
                                  threads, min_f1)
    except (CalibrationError, ConfigError, ExportCheckError) as error:
        return None, {"written": False, "reason": str(error)}


def export_checkpoint(
    checkpoint: Path | str,
    out_dir: Path | str,
    which: str = "teacher",
    sizes: tuple[tuple[int, int], ...] = VERIFY_SIZES,
    use_slim: bool = True,
    device: str = "cpu",
    threads: int = 0,
    int8: bool = True,
    calibration: Sequence[Path] = (),
    quant: QuantSettings = QuantSettings(),
    int8_min_f1: float = INT8_MIN_INSTANCE_F1,
) -> ExportResult:
    """Export, verify and document one checkpoint into `out_dir` (see the module docstring). `int8`: also write
    the int8 CPU model, calibrated on the `calibration` folders (default: the checkpoint's training sources)."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    ckpt = load_checkpoint(checkpoint)
    net, used, notice = network_from_checkpoint(ckpt, which)
    notices = [notice] if notice else []
    for line in notices:
        log.info(f"notice: {line}")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as tmp:
        work = Path(tmp)
        raw = export_fp32(net, work / "raw.onnx")
        chosen, slimmed = (_slim_if_better(raw, net, work, threads) if use_slim else (raw, {"kept": False}))
        log.info(f"onnxslim: {_describe_slim(slimmed)}")
        fp32 = work / CONTRACT.fp32_file
        shutil.move(str(chosen), fp32)
        fp16 = work / CONTRACT.fp16_file
        kept: tuple[str, ...] = ()
        fallbacks = list(FP32_FALLBACKS)
        while True:
            clipped = convert_fp16(fp32, fp16, kept)
            log.info(f"fp16: weights clipped by the converter: {clipped['small']} tiny (to +-1e-7), "
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
                log.info(f"fp16: {error}; converting again with {', '.join(kept)} in fp32")
        log.info(f"parity: {parity.summary()}")
        if parity.cells_compared == 0:
            note = "instance-map check compared empty maps only (the network finds no cells in the test images)"
            notices.append(note)
            log.info(f"notice: {note}")
        int8_parity, int8_record = (
            _int8_step(fp32, ckpt, calibration, quant, sizes, threads, int8_min_f1) if int8
            else (None, {"written": False, "reason": "not asked for (--no-int8)"})
        )
        if int8_parity is not None:
            log.info(f"int8: {int8_parity.summary()}")
        elif int8:
            note = f"int8 file not written: {int8_record['reason']}"
            notices.append(note)
            log.info(f"notice: {note}")
        files = {}
        for path in (fp32, fp16, *([work / INT8_FILE] if int8_parity is not None else [])):
            target = out_dir / path.name
            shutil.move(str(path), target)
            files[path.name] = target.stat().st_size
    stale = out_dir / INT8_FILE
    if int8_parity is None and stale.is_file():
        stale.unlink()  # it belongs to the weights just replaced
        log.info(f"removed the previous {INT8_FILE} (made from the weights this export replaced)")
    for name, size in files.items():
        over = " (over the 30 MB budget for weights/ in git)" if size > SIZE_BUDGET_BYTES else ""
        log.info(f"{name}: {size / 1e6:.1f} MB{over}")
    steps = {"onnxslim": slimmed, "fp16_weights_clipped": clipped, "fp16_nodes_kept_fp32": list(kept)}
    meta = manifest_meta(ckpt, checkpoint, used, notices, parity, steps)
    entries = {
        CONTRACT.fp32_file: {**file_entry(out_dir / CONTRACT.fp32_file), "precision": "fp32", "for": "CPU"},
        CONTRACT.fp16_file: {**file_entry(out_dir / CONTRACT.fp16_file), "precision": "fp16", "for": "CUDA"},
    }
    if int8_parity is not None:
        entries[INT8_FILE] = int8_entry(out_dir / INT8_FILE)
        meta = with_int8(meta, int8_parity, int8_record)
    else:
        meta[MANIFEST_KEY] = int8_record
    manifest = write_manifest(out_dir, entries, meta)
    return ExportResult(files, parity, used, notices, steps, manifest, int8_parity)


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
            "schedule": ckpt.get("schedule"),
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


def export_fp32_only(checkpoint: Path | str, out_dir: Path | str, which: str = "teacher") -> Path:
    """Only `mt2.fp32.onnx` and a manifest naming the checkpoint: no simplification, no fp16 file and none of
    its parity checks. For models that are scored on the CPU and thrown away (the Mean Teacher against
    supervised-only comparison of the accuracy benchmark); shipped weights go through `export_checkpoint`."""
    out_dir = Path(out_dir)
    ckpt = load_checkpoint(checkpoint)
    net, used, _ = network_from_checkpoint(ckpt, which)
    out_dir.mkdir(parents=True, exist_ok=True)
    export_fp32(net, out_dir / CONTRACT.fp32_file)
    meta = {
        "checkpoint": {"file": Path(checkpoint).name, "step": ckpt.get("step"), "schedule": ckpt.get("schedule")},
        "training": {"config": portable_config(ckpt.get("config"))},
        "weights": used,
    }
    return write_manifest(out_dir, [CONTRACT.fp32_file], meta)


def verify_directory(
    checkpoint: Path | str,
    out_dir: Path | str,
    which: str = "teacher",
    sizes: tuple[tuple[int, int], ...] = VERIFY_SIZES,
    device: str = "cpu",
    threads: int = 0,
) -> tuple[Parity, Int8Parity | None]:
    """Re-check exported files against their checkpoint: manifest checksums, onnx.checker, then parity; the int8
    file too (against the fp32 file) when the manifest lists it."""
    from app.manifest import listed_files, verify_model

    out_dir = Path(out_dir)
    fp32, fp16, int8 = out_dir / CONTRACT.fp32_file, out_dir / CONTRACT.fp16_file, out_dir / INT8_FILE
    with_int8_file = INT8_FILE in listed_files(out_dir)
    for path in (fp32, fp16, *([int8] if with_int8_file else [])):
        if verify_model(path) is None:
            raise ValueError(f"{out_dir}: no {CONTRACT.manifest_file} beside the models")
        check_onnx(path)
    net, _, _ = network_from_checkpoint(load_checkpoint(checkpoint), which)
    parity = verify(net, fp32, fp16, sizes, device, threads)
    return parity, (verify_int8(fp32, int8, sizes, threads) if with_int8_file else None)


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
    "convert_fp16",
    "export_checkpoint",
    "export_fp32",
    "export_fp32_only",
    "parse_sizes",
    "verify_directory",
]
