"""Small ONNX models that fit the app's model contract, built with onnx.helper (no torch, no training).

`contract_model` is a brightness detector: cell = sigmoid(gain * (blur(gray) - level)), boundary low
everywhere, cls the matching 3-class softmax. With ``kernel=1`` it is pointwise and therefore exactly
translation-equivariant, which the windowing tests rely on. Bright discs on a dark background come out as
one instance each after MT2 post-processing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def contract_model(
    path: Path,
    *,
    kernel: int = 1,
    weight: np.ndarray | None = None,
    gain: float = 20.0,
    level: float = 0.5,
    fp16: bool = False,
    names: tuple[str, str, str, str] = ("image", "cls", "cell", "boundary"),
) -> Path:
    """Write a contract-conforming model to `path` and return it.

    `weight` (k x k, k odd) replaces the box blur of the grey level, e.g. an off-centre 1 for a model that is not
    mirror-symmetric.
    """
    inp, cls_name, cell_name, bnd_name = names
    if weight is None:
        weight = np.full((1, 3, kernel, kernel), 1.0 / (3 * kernel * kernel), dtype=np.float32)
    else:
        kernel = weight.shape[0]
        weight = np.repeat(np.asarray(weight, np.float32)[None, None] / 3, 3, axis=1)
    pad = kernel // 2
    inits = [
        numpy_helper.from_array(weight, "w_gray"),
        numpy_helper.from_array(np.array(level, np.float32), "level"),
        numpy_helper.from_array(np.array(gain, np.float32), "gain"),
        numpy_helper.from_array(np.array(-10.0, np.float32), "low"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    nodes = [
        helper.make_node("Conv", [inp, "w_gray"], ["gray"], pads=[pad] * 4),
        helper.make_node("Sub", ["gray", "level"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["z"]),
        helper.make_node("Sigmoid", ["z"], [cell_name]),
        helper.make_node("Mul", ["gray", "zero"], ["flat"]),
        helper.make_node("Add", ["flat", "low"], ["bnd_logit"]),
        helper.make_node("Sigmoid", ["bnd_logit"], [bnd_name]),
        helper.make_node("Neg", ["z"], ["bg_logit"]),
        helper.make_node("Concat", ["bg_logit", "z", "bnd_logit"], ["cls_logits"], axis=1),
        helper.make_node("Softmax", ["cls_logits"], [cls_name], axis=1),
    ]
    dims_in = ["N", 3, "H", "W"]
    graph = helper.make_graph(
        nodes,
        "contract_model",
        [helper.make_tensor_value_info(inp, TensorProto.FLOAT, dims_in)],
        [
            helper.make_tensor_value_info(cls_name, TensorProto.FLOAT, ["N", 3, "H", "W"]),
            helper.make_tensor_value_info(cell_name, TensorProto.FLOAT, ["N", 1, "H", "W"]),
            helper.make_tensor_value_info(bnd_name, TensorProto.FLOAT, ["N", 1, "H", "W"]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    if fp16:
        from onnxconverter_common import float16

        model = float16.convert_float_to_float16(model, keep_io_types=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def disc_image(
    shape: tuple[int, int], centres: list[tuple[int, int]], radius: int, *, value: int = 220
) -> np.ndarray:
    """uint8 grayscale image of bright discs (value `value`) on a black background."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.zeros(shape, np.uint8)
    for cy, cx in centres:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = value
    return image


def domed_pair(shape=(80, 120), centres=((40, 40), (40, 78)), radius=20, drop=0.4) -> np.ndarray:
    """Cell map of two overlapping domes (1 at each centre, 1 - `drop` at the rim): one connected seed at
    T_seed 0.5 whose two maxima the saddle between them separates by about 0.35."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cell = np.zeros(shape, np.float32)
    for cy, cx in centres:
        d2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / radius**2
        cell = np.maximum(cell, np.where(d2 <= 1, 1 - drop * d2, 0).astype(np.float32))
    return cell


def labelled_disc_folder(
    folder: Path, count: int, shape: tuple[int, int], centres: list[tuple[int, int]], radius: int
) -> Path:
    """A challenge-layout folder (images/ + labels/) of `count` disc images (`disc_image`, image i shifted down
    by i px) with their label files; returns `folder`."""
    import imageio.v3 as iio
    import tifffile

    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for i in range(count):
        shifted = [(y + i, x) for y, x in centres]
        iio.imwrite(folder / "images" / f"c{i}.png", disc_image(shape, shifted, radius))
        labels = np.zeros(shape, np.uint16)
        for k, (y, x) in enumerate(shifted, 1):
            labels[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = k
        tifffile.imwrite(folder / "labels" / f"c{i}_label.tiff", labels, compression="zlib")
    return folder


def fp16_io_model(path: Path, **kwargs) -> Path:
    """`contract_model` converted to float16 throughout, inputs and outputs included (no keep_io_types)."""
    from onnxconverter_common import float16

    path = contract_model(Path(path), **kwargs)
    model = float16.convert_float_to_float16(onnx.load(str(path)), keep_io_types=False)
    onnx.save(model, str(path))
    return path


def int8_model(path: Path, *, seed: int = 0, **kwargs) -> Path:
    """`contract_model` statically quantised by ONNX Runtime (QDQ, int8 weights, uint8 activations calibrated on a
    few random batches): 8-bit initializers, float32 inputs and outputs, like the exported int8 file."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    path = Path(path)
    fp32 = contract_model(path.with_name(f"{path.stem}.fp32.onnx"), **kwargs)
    rng = np.random.default_rng(seed)
    batches = iter([{"image": rng.random((1, 3, 32, 32), dtype=np.float32)} for _ in range(4)])

    class Reader:
        def get_next(self):
            return next(batches, None)

    quantize_static(str(fp32), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
    fp32.unlink()
    return path


def shaped_model(
    path: Path,
    *,
    input_channels: int = 3,
    cls_channels: int = 3,
    input_type: int = TensorProto.FLOAT,
    input_dims: tuple = ("N", None, "H", "W"),
) -> Path:
    """A model with the contract's names but chosen channel counts, element type and input dims (None = channels).

    Every output is a mean over the input channels, broadcast to its channel count; it exists to test the
    contract check, not to segment anything.
    """
    dims = [input_channels if d is None else d for d in input_dims]
    nodes = [helper.make_node("ReduceMean", ["image", "axes"], ["mean"], keepdims=1)]
    outputs = []
    for name, channels in (("cls", cls_channels), ("cell", 1), ("boundary", 1)):
        nodes.append(helper.make_node("Concat", ["mean"] * channels, [name], axis=1))
        outputs.append(helper.make_tensor_value_info(name, input_type, [dims[0], channels, *dims[2:]]))
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    graph = helper.make_graph(
        nodes, "shaped_model", [helper.make_tensor_value_info("image", input_type, dims)], outputs, [axes]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
