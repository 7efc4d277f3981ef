"""Start a training run from an exported model: the weights of a contract ONNX file loaded back into `MT2Net`.

Users often have only the shipped `mt2.fp32.onnx`, not the checkpoint it came from, and want to fine-tune it on
their own images. The exporter folds every BatchNorm into the convolution before it, so the file holds one
weight and one bias per convolution and no normalisation statistics. Loading it back:

1. each ONNX `Conv` node is matched to its `nn.Conv2d` by name (the exporter names nodes after the module path;
   `ModuleDict` containers leave no trace there), and shapes must agree;
2. the folded weight goes into the convolution and the folded bias into the BatchNorm after it, whose statistics
   are first set to the identity, so the network in eval mode computes exactly what the file computes;
3. `calibrate_batchnorm` then runs images through the network and gives every BatchNorm the mean and variance of
   its own input, with scale and shift chosen so that its output is unchanged: eval mode stays exact, and in
   train mode (batch statistics) the network starts close to the exported one instead of renormalising every
   layer.

`load_onnx_weights` checks the result against ONNX Runtime on the calibration images and refuses a file whose
weights do not reproduce it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.model import MT2Net

# Largest difference allowed between the rebuilt network and ONNX Runtime on the same images (probabilities).
PARITY_LIMIT = 1e-4


def node_module_name(node_name: str) -> str:
    """Module path of an exported node: '/net/encoder/features.1/conv/conv.0/Conv' -> 'encoder.features.1.conv.0'.

    Each scope component is the module's name relative to the last called module, so a component that extends
    the previous one ('conv' then 'conv.0') replaces it; the export wrapper's own 'net' prefix is dropped.
    """
    parts: list[str] = []
    for piece in node_name.strip("/").split("/")[:-1]:
        if parts and piece.startswith(parts[-1] + "."):
            parts[-1] = piece
        else:
            parts.append(piece)
    if parts and parts[0] == "net":
        parts = parts[1:]
    return ".".join(parts)


def scoped_names(net: nn.Module) -> dict[str, str]:
    """Each `nn.Conv2d` of `net` under the name the exporter gives it (`ModuleDict` levels left out)."""
    containers = {name for name, module in net.named_modules() if isinstance(module, nn.ModuleDict)}
    out = {}
    for name, module in net.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        pieces = name.split(".")
        kept = [p for i, p in enumerate(pieces) if ".".join(pieces[: i + 1]) not in containers]
        out[".".join(kept)] = name
    return out


def forward_order(net: nn.Module, probe: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """Convolutions and BatchNorms in the order a forward pass calls them; modules the pass never calls (an
    encoder's unused classifier stem, such as EfficientNet's `_conv_head`) are absent, as from the export."""
    order: list[tuple[str, nn.Module]] = []
    hooks = [
        module.register_forward_hook(lambda m, i, o, name=name: order.append((name, m)))
        for name, module in net.named_modules()
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d))
    ]
    try:
        with torch.no_grad():
            net.eval()(probe)
    finally:
        for hook in hooks:
            hook.remove()
    return order


def following_batchnorm(order: list[tuple[str, nn.Module]]) -> dict[str, nn.BatchNorm2d]:
    """The BatchNorm that directly follows each convolution of a `forward_order` (absent for the heads)."""
    return {
        name: nxt
        for (name, module), (_, nxt) in zip(order, order[1:])
        if isinstance(module, nn.Conv2d) and isinstance(nxt, nn.BatchNorm2d) and nxt.num_features == module.out_channels
    }


def onnx_conv_weights(path: Path | str) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """(weight, bias) of every Conv node of an ONNX file, keyed by module path."""
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises several types for a file that is not ONNX
        raise ValueError(f"{Path(path).name}: not a readable ONNX model ({type(exc).__name__})") from exc
    tensors = {t.name: t for t in model.graph.initializer}
    out: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        if node.input[1] not in tensors:
            raise ValueError(f"{Path(path).name}: convolution {node.name} has no stored weight")
        weight = numpy_helper.to_array(tensors[node.input[1]]).astype(np.float32)
        bias = numpy_helper.to_array(tensors[node.input[2]]).astype(np.float32) if len(node.input) > 2 else None
        out[node_module_name(node.name)] = (weight, bias)
    return out


def running_stats(norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The running mean and variance of a BatchNorm (MT2Net's all track them)."""
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError("a BatchNorm without running statistics cannot take folded weights")
    return norm.running_mean, norm.running_var


@torch.no_grad()
def load_folded_weights(net: MT2Net, path: Path | str) -> dict[str, nn.BatchNorm2d]:
    """Copy every folded convolution of `path` into `net`; return the BatchNorms that took a folded bias."""
    name = Path(path).name
    stored = onnx_conv_weights(path)
    order = forward_order(net, torch.zeros(1, 3, 64, 64))
    called = {module_name for module_name, _ in order}
    own = {key: module_name for key, module_name in scoped_names(net).items() if module_name in called}
    if set(stored) != set(own):
        missing, extra = sorted(set(own) - set(stored)), sorted(set(stored) - set(own))
        raise ValueError(
            f"{name}: convolutions do not match the {net.config.encoder} network "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        )
    modules = dict(net.named_modules())
    norms = following_batchnorm(order)
    for key, (weight, bias) in stored.items():
        conv: nn.Conv2d = modules[own[key]]
        if tuple(weight.shape) != tuple(conv.weight.shape):
            raise ValueError(f"{name}: {key} has shape {weight.shape}, the network needs {tuple(conv.weight.shape)}")
        conv.weight.copy_(torch.from_numpy(weight))
        norm = norms.get(own[key])
        target = norm.bias if norm is not None else conv.bias
        if target is None:
            raise ValueError(f"{name}: {key} has no BatchNorm or bias to take its folded bias")
        target.copy_(torch.from_numpy(bias) if bias is not None else torch.zeros_like(target))
        if norm is not None:
            running_mean, running_var = running_stats(norm)
            norm.weight.fill_(1.0)
            running_mean.zero_()
            running_var.fill_(1.0 - norm.eps)
    return norms


@torch.no_grad()
def calibrate_batchnorm(net: nn.Module, norms: dict[str, nn.BatchNorm2d], images: torch.Tensor) -> None:
    """Give each identity BatchNorm its input's statistics without changing its eval-mode output.

    With input mean m and variance v per channel, running stats (m, v), weight sqrt(v + eps) and bias b + m give
    y = x + b in eval mode (what the folded file computes) and about the same in train mode on similar batches.
    """
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            x = inputs[0].double()
            stats[name] = (x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False))

        return hook

    hooks = [norm.register_forward_pre_hook(record(name)) for name, norm in norms.items()]
    try:
        net.eval()(images)
    finally:
        for hook in hooks:
            hook.remove()
    for name, norm in norms.items():
        mean, var = stats[name]
        running_mean, running_var = running_stats(norm)
        running_mean.copy_(mean.float())
        running_var.copy_(var.float())
        norm.weight.copy_(torch.sqrt(var + norm.eps).float())
        norm.bias.add_(mean.float())


def parity(net: MT2Net, path: Path | str, images: torch.Tensor) -> float:
    """Largest absolute difference between `net` (eval) and ONNX Runtime running `path` on `images`."""
    from app.runner import ModelRunner
    from training.parity import max_abs_diff, torch_probabilities

    batch = images.numpy().astype(np.float32)
    return max_abs_diff(torch_probabilities(net, batch), ModelRunner(path, device="cpu").run(batch))


def load_onnx_weights(net: MT2Net, path: Path | str, images: torch.Tensor, limit: float = PARITY_LIMIT) -> float:
    """Load an exported contract model into `net`, calibrate its BatchNorms on `images` (N×3×H×W in [0, 1])
    and return the measured parity with ONNX Runtime; a file that does not reproduce is refused."""
    norms = load_folded_weights(net, path)
    calibrate_batchnorm(net, norms, images)
    measured = parity(net, path, images)
    if not measured <= limit:
        raise ValueError(
            f"{Path(path).name}: rebuilt network differs from the file by {measured:.2e} (limit {limit:g})"
        )
    return measured


__all__ = [
    "PARITY_LIMIT",
    "calibrate_batchnorm",
    "load_folded_weights",
    "load_onnx_weights",
    "node_module_name",
    "onnx_conv_weights",
    "parity",
    "scoped_names",
]
