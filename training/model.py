"""The MT2 network: UNet++ (segmentation_models_pytorch) with three heads on the last decoder feature.

Heads (paper section 2.2.1): ``cls`` 3 classes (background, interior, boundary), ``cell`` and ``boundary``
heatmaps of one channel each. `MT2Net.forward` returns logits for training; `ProbabilityModel` wraps it
with the activations the ONNX model contract requires (softmax / sigmoid inside the graph).
"""

from __future__ import annotations

from dataclasses import dataclass

import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.base import SegmentationHead
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one preset; stored in every checkpoint so it can be rebuilt exactly."""

    encoder: str = "mobilenet_v2"
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16, 16)
    encoder_depth: int = 5

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        data = dict(data)
        if "decoder_channels" in data:
            data["decoder_channels"] = tuple(data["decoder_channels"])
        return cls(**data)


HEADS: tuple[tuple[str, int], ...] = (("cls", 3), ("cell", 1), ("boundary", 1))


class MT2Net(nn.Module):
    """UNet++ encoder/decoder shared by three 3x3 convolution heads; returns a dict of logits."""

    def __init__(self, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.config = config
        unet = smp.UnetPlusPlus(
            encoder_name=config.encoder,
            encoder_weights=None,
            encoder_depth=config.encoder_depth,
            decoder_channels=config.decoder_channels,
            classes=1,
        )
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        width = config.decoder_channels[-1]
        self.heads = nn.ModuleDict({name: SegmentationHead(width, ch, kernel_size=3) for name, ch in HEADS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feature = self.decoder(self.encoder(x))
        return {name: head(feature) for name, head in self.heads.items()}


class ProbabilityModel(nn.Module):
    """Export wrapper: RGB float input in [0, 1] to (cls softmax, cell sigmoid, boundary sigmoid)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.net(image)
        return out["cls"].softmax(dim=1), out["cell"].sigmoid(), out["boundary"].sigmoid()


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["HEADS", "MT2Net", "ModelConfig", "ProbabilityModel", "parameter_count"]
