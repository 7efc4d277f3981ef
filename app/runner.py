"""ONNX Runtime session for the MT2 network, checked against the app's model contract.

`ModelRunner.run` takes a float32 N×3×H×W batch in [0, 1] and returns the three contract outputs as float32.
Device choice: onnxruntime-gpu lists the CUDA provider even where no GPU or CUDA library is present, so the app
asks whether CUDA really works by opening a one-node probe session and reading back the providers it got
(`cuda_usable`). fp16 models are accepted with float32 IO (`keep_io_types`) or float16 IO (the batch is cast on
the way in and the outputs back to float32).

Model file choice (`resolve_model`): a weights folder holds `mt2.fp32.onnx` (CPU), `mt2.fp16.onnx` (CUDA) and
possibly `mt2.int8.onnx` (CPU, statically quantised by `training/quantize.py`); `precision` "auto" takes fp16 on
CUDA, int8 on a CPU with VNNI when the manifest lists the int8 file, else fp32.

The app does not depend on the `onnx` package, so the two things it needs from the file itself (a probe model
and the element type of the initializers, which tells an fp16 or int8 model with float32 IO from an fp32 one)
are done with a few lines of protobuf wire format below.
"""

from __future__ import annotations

import logging
import mmap
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.config import CONTRACT, ModelContract
from app.errors import ModelError

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "fp32", "fp16", "int8")
# The int8 CPU model beside the contract's fp32 and fp16 files (written by training/quantize.py).
INT8_FILE = "mt2.int8.onnx"
# x86 CPU flags of the 8-bit dot-product instructions (AVX512-VNNI, AVX-VNNI) that ONNX Runtime's int8
# convolutions are built for; without them the app does not choose the int8 file by itself.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni")
CPUINFO = Path("/proc/cpuinfo")
CUDNN_SEARCH = ("DEFAULT", "HEURISTIC", "EXHAUSTIVE")
# ONNX Runtime's type strings for the two element types the contract allows.
ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# ONNX TensorProto.DataType codes.
ONNX_FLOAT, ONNX_UINT8, ONNX_INT8, ONNX_FLOAT16 = 1, 2, 3, 10
ORT_DEFAULT_LOG_SEVERITY = 2


# --- protobuf wire format: just enough to write a probe model and read initializer types ---------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes | int) -> bytes:
    """One protobuf field: varint for ints, length-delimited for bytes."""
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int):
    """Yield (field number, wire type, value or (start, end) of a length-delimited payload)."""
    pos = start
    while pos < end:
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            yield number, wire, value
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            yield number, wire, (pos, pos + length)
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    if pos != end:
        raise ValueError("truncated protobuf message")


def initializer_bytes(path: Path) -> dict[int, int]:
    """Serialized bytes of the graph's initializers per ONNX element type (ModelProto.graph.initializer)."""
    totals: dict[int, int] = {}
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        buf = memoryview(mm)
        try:
            for number, wire, span in _fields(buf, 0, len(buf)):
                if number != 7 or wire != 2:  # ModelProto.graph
                    continue
                for g_number, g_wire, t_span in _fields(buf, *span):
                    if g_number != 5 or g_wire != 2:  # GraphProto.initializer
                        continue
                    dtype = next((v for n, w, v in _fields(buf, *t_span) if n == 2 and w == 0), 0)
                    totals[dtype] = totals.get(dtype, 0) + t_span[1] - t_span[0]
        finally:
            buf.release()
    return totals


def _probe_model() -> bytes:
    """A one-node ONNX model (Identity on a float vector of length 1), IR 8, opset 17."""
    dim = _field(1, _field(1, 1))  # TensorShapeProto.dim { dim_value: 1 }
    tensor_type = _field(1, _field(1, ONNX_FLOAT) + _field(2, dim))  # TypeProto.tensor_type
    value_x = _field(1, b"x") + _field(2, tensor_type)
    value_y = _field(1, b"y") + _field(2, tensor_type)
    node = _field(1, b"x") + _field(2, b"y") + _field(4, b"Identity")
    graph = _field(1, node) + _field(2, b"probe") + _field(11, value_x) + _field(12, value_y)
    opset = _field(1, b"") + _field(2, 17)
    return _field(1, 8) + _field(8, opset) + _field(7, graph)


@lru_cache(maxsize=1)
def cuda_usable() -> bool:
    """True when a session really gets the CUDA provider (library, driver and GPU all present)."""
    if CUDA not in ort.get_available_providers():
        return False
    ort.set_default_logger_severity(4)  # a failed CUDA load is expected on CPU machines: keep it quiet
    try:
        session = ort.InferenceSession(_probe_model(), providers=[CUDA, CPU])
        return session.get_providers()[0] == CUDA
    except Exception:  # noqa: BLE001 - any failure to start CUDA means "no usable GPU"
        return False
    finally:
        ort.set_default_logger_severity(ORT_DEFAULT_LOG_SEVERITY)


def _check_device(device: str) -> None:
    if device not in DEVICES:
        raise ModelError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")


def will_use_cuda(device: str) -> bool:
    """Whether `device` resolves to the CUDA provider on this machine; "cuda" without a GPU is an error."""
    _check_device(device)
    if device == "cpu":
        return False
    usable = cuda_usable()
    if device == "cuda" and not usable:
        raise ModelError("device 'cuda' requested but no usable CUDA GPU was found (try --device auto or cpu)")
    return usable


# --- choosing the model file -----------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def cpu_has_vnni() -> bool:
    """True when the CPU lists an 8-bit dot-product flag (`VNNI_FLAGS`) in /proc/cpuinfo; False without one and
    where there is no such file or flags line (other systems, ARM)."""
    try:
        lines = CPUINFO.read_text(errors="replace").splitlines()
    except OSError:
        return False
    flags = {flag for line in lines if line.startswith("flags") for flag in line.partition(":")[2].split()}
    return not flags.isdisjoint(VNNI_FLAGS)


def precision_files(contract: ModelContract = CONTRACT) -> dict[str, str]:
    """File name of each explicit precision inside a weights folder."""
    return {"fp32": contract.fp32_file, "fp16": contract.fp16_file, "int8": INT8_FILE}


def _auto_file(folder: Path, use_cuda: bool, contract: ModelContract) -> Path:
    """fp16 on CUDA; on the CPU int8 when the manifest lists it and the CPU has VNNI, else fp32; a folder holding
    only the fp16 file runs it on the CPU."""
    from app.manifest import listed_files

    fp16, fp32, int8 = folder / contract.fp16_file, folder / contract.fp32_file, folder / INT8_FILE
    if use_cuda and fp16.is_file():
        return fp16
    if not use_cuda and INT8_FILE in listed_files(folder) and cpu_has_vnni():
        return int8
    if fp32.is_file():
        return fp32
    if fp16.is_file():
        log.warning("%s: no %s, running the fp16 model on the CPU (slower)", folder, contract.fp32_file)
        return fp16
    raise ModelError(f"{folder}: folder holds neither {contract.fp32_file} nor {contract.fp16_file}")


def resolve_model(
    path: Path | str, device: str = "auto", precision: str = "auto", contract: ModelContract = CONTRACT
) -> Path:
    """The model file to load: a file as given; in a folder the file of `precision` (`PRECISIONS`; "auto": see
    `_auto_file`), an explicit precision whose file is missing being a ModelError naming it.

    A manifest beside the chosen file is checked (size and sha256) before the file is used.
    """
    if precision not in PRECISIONS:
        raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: model file or folder not found")
    if not path.is_dir():
        chosen = path
    elif precision == "auto":
        chosen = _auto_file(path, will_use_cuda(device), contract)
    else:
        chosen = path / precision_files(contract)[precision]
        if not chosen.is_file():
            raise ModelError(f"{path}: precision {precision} asked for, but there is no {chosen.name} in the folder")
    if (chosen.parent / contract.manifest_file).is_file():
        from app.manifest import verify_model

        verify_model(chosen)
    return chosen


# --- the runner ------------------------------------------------------------------------------------------------


def _static(dim: object) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def check_contract(session: ort.InferenceSession, name: str, contract: ModelContract = CONTRACT) -> np.dtype:
    """Refuse a session whose inputs/outputs differ from the contract; return the IO element type."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [contract.input_name]:
        raise ModelError(
            f"{name}: model inputs are {[i.name for i in inputs]}, the contract needs one input "
            f"'{contract.input_name}'"
        )
    found = {o.name: o for o in outputs}
    if set(found) != set(contract.output_names):
        raise ModelError(
            f"{name}: model outputs are {sorted(found)}, the contract needs {list(contract.output_names)}"
        )
    channels = {
        contract.input_name: contract.input_channels,
        contract.output_names[0]: contract.cls_channels,
        contract.output_names[1]: 1,
        contract.output_names[2]: 1,
    }
    io_types = set()
    for arg in [inputs[0], *(found[n] for n in contract.output_names)]:
        if arg.type not in ORT_TYPES:
            raise ModelError(f"{name}: '{arg.name}' has element type {arg.type}, expected float or float16")
        io_types.add(arg.type)
        if len(arg.shape) != 4:
            raise ModelError(f"{name}: '{arg.name}' has rank {len(arg.shape)}, expected 4 (N×C×H×W)")
        c = _static(arg.shape[1])
        if c is not None and c != channels[arg.name]:
            raise ModelError(f"{name}: '{arg.name}' has {c} channels, expected {channels[arg.name]}")
    if len(io_types) != 1:
        raise ModelError(f"{name}: inputs and outputs mix element types {sorted(io_types)}")
    return np.dtype(ORT_TYPES[io_types.pop()])


class ModelRunner:
    """One ONNX Runtime session of a contract model; `.run(batch)` returns float32 (cls, cell, boundary)."""

    def __init__(
        self,
        path: Path | str,
        device: str = "auto",
        threads: int = 0,
        cudnn_search: str = "DEFAULT",
        contract: ModelContract = CONTRACT,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: model file not found")
        if cudnn_search not in CUDNN_SEARCH:
            raise ModelError(f"cudnn_search must be one of {', '.join(CUDNN_SEARCH)}, got {cudnn_search!r}")
        self.contract = contract
        use_cuda = will_use_cuda(device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = max(0, int(threads))
        providers: list = [CPU]
        if use_cuda:
            providers = [(CUDA, {"cudnn_conv_algo_search": cudnn_search}), CPU]
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # ORT raises several types for unreadable models: each becomes one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{self.path.name}: cannot load the ONNX model ({first})") from exc
        self.provider = self.session.get_providers()[0]
        if use_cuda and self.provider != CUDA:
            log.warning("%s: CUDA provider unavailable for this model, running on the CPU", self.path.name)
        self.dtype = check_contract(self.session, self.path.name, contract)
        shape = self.session.get_inputs()[0].shape
        self.fixed_batch = _static(shape[0])
        height, width = _static(shape[2]), _static(shape[3])
        self.input_hw: tuple[int, int] | None = (height, width) if height is not None and width is not None else None
        self.precision = self._precision()
        self._binding = _CudaBinding(self) if self.provider == CUDA else None

    def _precision(self) -> str:
        """'fp16' when the IO is float16 or initializers are float16 (keep_io_types export, possibly with some
        layers kept in fp32 for accuracy); 'int8' when initializers are 8-bit integers (a quantised QDQ model with
        float32 IO); else 'fp32'."""
        if self.dtype == np.float16:
            return "fp16"
        try:
            sizes = initializer_bytes(self.path)
        except (ValueError, IndexError, OSError):
            return "fp32"
        if sizes.get(ONNX_INT8, 0) + sizes.get(ONNX_UINT8, 0) > 0:
            return "int8"
        return "fp16" if sizes.get(ONNX_FLOAT16, 0) > 0 else "fp32"

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Run one float32 N×3×H×W batch in [0, 1]; return float32 (cls N×3, cell N×1, boundary N×1)."""
        if batch.ndim != 4 or batch.shape[1] != self.contract.input_channels:
            raise ValueError(f"batch must be N×{self.contract.input_channels}×H×W, got shape {batch.shape}")
        if self.input_hw is not None and tuple(batch.shape[2:]) != self.input_hw:
            raise ModelError(f"{self.path.name}: model takes {self.input_hw} windows, got {batch.shape[2:]}")
        if self.fixed_batch is not None and batch.shape[0] != self.fixed_batch:
            return self._run_fixed_batch(batch)
        if self._binding is not None:
            return self._binding.run(batch)
        feed = np.ascontiguousarray(batch, dtype=self.dtype)
        outs = self.session.run(list(self.contract.output_names), {self.contract.input_name: feed})
        return tuple(np.asarray(o, dtype=np.float32) for o in outs)  # type: ignore[return-value]

    def _run_fixed_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A model exported with a fixed batch size: run zero-padded chunks of that size."""
        n, size = batch.shape[0], self.fixed_batch
        assert size is not None
        parts = []
        for start in range(0, n, size):
            chunk = batch[start : start + size]
            if chunk.shape[0] < size:
                chunk = np.concatenate([chunk, np.zeros((size - chunk.shape[0], *chunk.shape[1:]), chunk.dtype)])
            parts.append(self.run(chunk))
        return tuple(np.concatenate([p[k] for p in parts])[:n] for k in range(3))  # type: ignore[return-value]


class _CudaBinding:
    """CUDA path: I/O binding with device buffers of one fixed shape, so cuDNN plans once.

    Smaller batches (the last one of an image) are zero-padded to the fixed batch; a different window size
    rebuilds the buffers. Not exercised by the test suite (no GPU in CI).
    """

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.shape: tuple[int, ...] | None = None

    def _allocate(self, shape: tuple[int, ...]) -> None:
        r = self.runner
        n, _, h, w = shape
        self.shape = shape
        self.host = np.zeros(shape, r.dtype)
        self.binding = r.session.io_binding()
        self.input = ort.OrtValue.ortvalue_from_shape_and_type(shape, r.dtype, "cuda", 0)
        self.binding.bind_ortvalue_input(r.contract.input_name, self.input)
        self.outputs = []
        for name, c in zip(r.contract.output_names, (r.contract.cls_channels, 1, 1)):
            value = ort.OrtValue.ortvalue_from_shape_and_type((n, c, h, w), r.dtype, "cuda", 0)
            self.binding.bind_ortvalue_output(name, value)
            self.outputs.append(value)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = batch.shape[0]
        if self.shape is None or self.shape[1:] != batch.shape[1:] or self.shape[0] < n:
            self._allocate(tuple(batch.shape))
        assert self.shape is not None
        self.host[:n] = batch
        self.host[n:] = 0
        self.input.update_inplace(self.host)
        self.runner.session.run_with_iobinding(self.binding)
        return tuple(np.asarray(v.numpy()[:n], dtype=np.float32) for v in self.outputs)  # type: ignore[return-value]
