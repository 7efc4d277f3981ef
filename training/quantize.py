"""The int8 CPU model: ONNX Runtime static quantisation of `mt2.fp32.onnx` into `mt2.int8.onnx`.

Stages, each a function: find training images (`calibration_images`: a training source in the challenge layout is
split as training split it, so its validation images never calibrate; a plain folder of images is used whole);
cut a fixed, seeded set of crops from them through the app's own reader and normaliser, laid out as the model
contract expects (`calibration_crops`: N×3×H×W float32 in [0, 1]); `quant_pre_process` (shape inference and
ONNX Runtime's basic graph optimisation), then `quantize_static` in the QDQ format with per-channel int8 weights,
activation ranges calibrated on the crops (`quantize_int8`); check the result against the fp32 file
(`training.parity.verify_int8`). `quant_pre_process` and the calibrator write scratch models beside their input
and into the working directory, so every stage runs inside a temporary folder, the working directory meanwhile,
and only the checked file leaves it.

`training export` runs `int8_from_training` beside the fp32 and fp16 files; `python -m training quantize
--weights DIR` (`quantize_weights`) adds an int8 file to an existing weights folder and its manifest, without a
checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import io
import logging
import math
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from app.config import CONTRACT, InferenceConfig
from app.errors import InputError
from app.manifest import file_entry, read_manifest, verify_model, write_manifest
from app.normalize import read_normalized
from app.reader import input_files
from app.runner import INT8_FILE
from training.config import DataConfig, TrainConfig
from training.data import IMAGES, split_dataset
from training.parity import INT8_MIN_INSTANCE_F1, VERIFY_SIZES, Int8Parity, verify_int8

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
ACTIVATION_TYPES = ("quint8", "qint8")
# Crops fed to the calibrator per call: it holds every intermediate tensor of a call in memory, so its memory grows
# with this chunk, not with the number of crops (ranges and histograms merge across calls).
CALIBRATION_CHUNK = 8
MANIFEST_KEY = "quantization"  # the manifest's record of how the int8 file was made (or why it was not)


class CalibrationError(ValueError):
    """No usable calibration images: the int8 file cannot be made."""


@dataclass(frozen=True)
class QuantSettings:
    """How the int8 file is made. Defaults chosen by measurement on the shipped weights (docs/EXPORT.md)."""

    # Activation-range calibration (CALIBRATION_METHODS). The three agree within a cell or two on the parity set
    # and on real images; Entropy was best or tied on every parity figure of the shipped weights.
    method: str = "entropy"
    # Activation type (ACTIVATION_TYPES; weights are always per-channel QInt8). Parity tied; QUInt8 activations
    # with QInt8 weights are what ONNX Runtime recommends for x86 CPUs with VNNI, where the app uses the file.
    activations: str = "quint8"
    crops: int = 32
    crop_size: int = 256  # px, a multiple of the contract's size_multiple
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {self.method!r}")
        if self.activations not in ACTIVATION_TYPES:
            raise ValueError(f"activations must be one of {', '.join(ACTIVATION_TYPES)}, got {self.activations!r}")
        if self.crops < 1 or self.crop_size <= 0 or self.crop_size % CONTRACT.size_multiple:
            raise ValueError(f"need at least one crop and a crop size that is a positive multiple of "
                             f"{CONTRACT.size_multiple}, got {self.crops} crops of {self.crop_size} px")


# --- calibration data ---------------------------------------------------------------------------------------------


def data_config(training_config: Mapping[str, Any] | None) -> DataConfig | None:
    """The data section of a training config as recorded in a checkpoint or manifest (None when none is)."""
    return TrainConfig.from_dict(dict(training_config)).data if training_config else None


def calibration_folders(given: Sequence[Path], data: DataConfig | None) -> list[Path]:
    """The folders given, else the training sources `data` records (relative to the working directory, as training
    read them); CalibrationError when there are none or one does not exist."""
    folders = list(given) or [Path(source) for source in (data.sources if data else ())]
    if not folders:
        raise CalibrationError("no calibration folders: the training config records no data sources "
                               "(give --calibration DIR)")
    missing = [str(folder) for folder in folders if not folder.is_dir()]
    if missing:
        raise CalibrationError(f"calibration folder not found: {', '.join(missing)} (give --calibration DIR)")
    return folders


def calibration_images(folder: Path, data: DataConfig | None) -> list[Path]:
    """Training images of one folder. A challenge-layout folder (images/) is split by `data` as training split it
    and only its training images count (labelled and unlabelled, never validation); without a training config
    every image of its images/ counts, and so does every image of a plain folder."""
    layout = (folder / IMAGES).is_dir()
    if data is None or not layout:
        return input_files(folder / IMAGES if layout else folder)
    split = split_dataset(folder, data)
    return sorted({sample.image for sample in split.labelled + split.unlabelled})


def crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random size×size window of a uint8 H×W×3 image as float32 3×size×size in [0, 1], as the app feeds the
    model; a smaller image is zero-padded at the bottom and right, as the app pads windows."""
    h, w = image.shape[:2]
    y, x = int(rng.integers(0, max(h - size, 0) + 1)), int(rng.integers(0, max(w - size, 0) + 1))
    out = np.zeros((CONTRACT.input_channels, size, size), np.float32)
    window = image[y : y + size, x : x + size].transpose(2, 0, 1)
    out[:, : window.shape[1], : window.shape[2]] = window / np.float32(255.0)
    return out


def calibration_crops(
    sources: Sequence[Sequence[Path]], settings: QuantSettings, cfg: InferenceConfig = InferenceConfig()
) -> np.ndarray:
    """`settings.crops` crops (N×3×S×S float32) taken in turn from each non-empty source, so that every kind of
    image counts whatever its number of files, each from the next image of a seeded shuffle of that source (a
    small source starts over), read and normalised as `predict` does. Unreadable files are skipped;
    CalibrationError when no image is usable."""
    rng = np.random.default_rng(settings.seed)
    queues = [deque(images[i] for i in rng.permutation(len(images))) for images in sources if images]
    crops: list[np.ndarray] = []
    while len(crops) < settings.crops and any(queues):
        for queue in (q for q in queues if q):
            if len(crops) == settings.crops:
                break
            path = queue.popleft()
            try:
                image = read_normalized(path, cfg.max_pixels, cfg)
            except InputError as error:
                log.info(f"calibration: skipped {error}")
                continue
            crops.append(crop(image, settings.crop_size, rng))
            queue.append(path)
    if not crops:
        raise CalibrationError("no readable calibration image in the calibration folders")
    return np.stack(crops)


class CropReader(CalibrationDataReader):
    """Feeds calibration crops to ONNX Runtime one at a time under the contract's input name; `set_range` lets
    `quantize_static` collect in chunks (its CalibStridedMinMax option, which works for every method)."""

    def __init__(self, crops: np.ndarray) -> None:
        self.crops = crops
        self.set_range(0, len(crops))

    def get_next(self) -> dict[str, np.ndarray] | None:
        index = next(self.indices, None)
        return None if index is None else {CONTRACT.input_name: self.crops[index : index + 1]}

    def __len__(self) -> int:
        return len(self.crops)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.indices = iter(range(start_index, min(end_index, len(self.crops))))


# --- quantisation -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _working_directory(folder: Path) -> Iterator[None]:
    """Run the block in `folder` (ONNX Runtime's quantisation tools may write scratch files into the working
    directory, which would otherwise be the repository)."""
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def quantize_int8(fp32: Path, dst: Path, crops: np.ndarray, settings: QuantSettings) -> Path:
    """Write the statically quantised QDQ model of `fp32` to `dst`: per-channel QInt8 weights, activations of
    `settings.activations` with ranges calibrated on `crops` by `settings.method`. Scratch files stay in a
    temporary folder, the working directory meanwhile, removed afterwards."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    activations = {"quint8": QuantType.QUInt8, "qint8": QuantType.QInt8}
    fp32, dst = fp32.resolve(), dst.resolve()
    chatter = io.StringIO()  # the histogram calibrators print their progress on stdout
    with (tempfile.TemporaryDirectory(prefix="mt2-quantize-") as tmp, _working_directory(Path(tmp)),
          contextlib.redirect_stdout(chatter)):
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / INT8_FILE
        # Symbolic shape inference cannot follow the decoder's Resize nodes; ONNX shape inference types every
        # tensor the quantiser needs.
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(quantized),
            CropReader(crops),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=activations[settings.activations],
            calibrate_method=methods[settings.method],
            extra_options={"CalibStridedMinMax": math.gcd(len(crops), CALIBRATION_CHUNK)},
        )
        shutil.move(str(quantized), dst)
    log.debug(chatter.getvalue())
    return dst


def build_int8(
    fp32: Path,
    dst: Path,
    sources: Sequence[Sequence[Path]],
    settings: QuantSettings = QuantSettings(),
    sizes: tuple[tuple[int, int], ...] = VERIFY_SIZES,
    threads: int = 0,
    min_f1: float = INT8_MIN_INSTANCE_F1,
) -> Int8Parity:
    """Calibrate, quantise, check (`onnx.checker`) and verify against `fp32`: `dst` holds the int8 model and the
    parity figures are returned, or ExportCheckError (parity) / CalibrationError (no images) is raised and `dst`
    is removed."""
    import onnx

    try:
        quantize_int8(fp32, dst, calibration_crops(sources, settings), settings)
        onnx.checker.check_model(str(dst), full_check=True)
        return verify_int8(fp32, dst, sizes, threads, min_f1)
    except BaseException:
        dst.unlink(missing_ok=True)
        raise


def int8_from_training(
    fp32: Path,
    dst: Path,
    given: Sequence[Path],
    training_config: Mapping[str, Any] | None,
    settings: QuantSettings = QuantSettings(),
    sizes: tuple[tuple[int, int], ...] = VERIFY_SIZES,
    threads: int = 0,
    min_f1: float = INT8_MIN_INSTANCE_F1,
) -> tuple[Int8Parity, dict[str, Any]]:
    """`build_int8` into `dst`, calibrated on the folders given or else on the training sources of
    `training_config`, split as training split them; returns the parity figures and the manifest's record."""
    data = data_config(training_config)
    folders = calibration_folders(given, data)
    sources = [calibration_images(folder, data) for folder in folders]
    parity = build_int8(fp32, dst, sources, settings, sizes, threads, min_f1)
    return parity, quantization_record(settings, folders, sum(map(len, sources)))


# --- manifest -----------------------------------------------------------------------------------------------------


def quantization_record(settings: QuantSettings, folders: Sequence[Path], images: int) -> dict[str, Any]:
    """What the manifest says about how the int8 file was made (folder names only: no machine's layout)."""
    return {
        "written": True,
        "format": "QDQ",
        "weights": "QInt8 per channel",
        **asdict(settings),
        "calibration_sources": [folder.name for folder in folders],
        "calibration_images": images,
        "onnxruntime": _onnxruntime_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _onnxruntime_version() -> str:
    for name in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def int8_entry(path: Path) -> dict[str, Any]:
    """Manifest `files` entry of the int8 model."""
    return {**file_entry(path), "precision": "int8", "for": "CPU"}


def with_int8(meta: Mapping[str, Any], parity: Int8Parity, record: Mapping[str, Any]) -> dict[str, Any]:
    """Manifest metadata with the int8 parity figures (under `parity`, its limit under `parity.limits`) and the
    quantisation record added."""
    figures = dict(meta.get("parity") or {})
    figures["limits"] = {**figures.get("limits", {}), "int8_instance_f1": parity.min_instance_f1}
    figures["int8"] = asdict(parity)
    return {**meta, "parity": figures, MANIFEST_KEY: dict(record)}


# --- an existing weights folder -----------------------------------------------------------------------------------


def quantize_weights(
    weights: Path,
    folders: Sequence[Path] = (),
    settings: QuantSettings = QuantSettings(),
    sizes: tuple[tuple[int, int], ...] = VERIFY_SIZES,
    threads: int = 0,
    min_f1: float = INT8_MIN_INSTANCE_F1,
) -> Int8Parity:
    """Add `mt2.int8.onnx` to a weights folder and its manifest, calibrated on `folders` (default: the training
    sources its manifest records, their validation split left out). The fp32 file is checked against the manifest
    first; a file that fails parity is not written and the folder is left as it was (ExportCheckError). The int8
    file is moved in, then the manifest replaced in one rename."""
    manifest = read_manifest(weights / CONTRACT.manifest_file)
    fp32 = weights / CONTRACT.fp32_file
    verify_model(fp32)
    training = (manifest.get("training") or {}).get("config")
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=weights) as tmp:
        staged = Path(tmp) / INT8_FILE
        parity, record = int8_from_training(fp32, staged, folders, training, settings, sizes, threads, min_f1)
        shutil.move(str(staged), weights / INT8_FILE)
    meta = {key: value for key, value in manifest.items() if key not in ("manifest_version", "files")}
    files = {**manifest["files"], INT8_FILE: int8_entry(weights / INT8_FILE)}
    write_manifest(weights, files, with_int8(meta, parity, record))
    return parity


__all__ = [
    "ACTIVATION_TYPES",
    "CALIBRATION_METHODS",
    "MANIFEST_KEY",
    "CalibrationError",
    "CropReader",
    "QuantSettings",
    "build_int8",
    "calibration_crops",
    "calibration_folders",
    "calibration_images",
    "data_config",
    "int8_entry",
    "int8_from_training",
    "quantization_record",
    "quantize_int8",
    "quantize_weights",
    "with_int8",
]
