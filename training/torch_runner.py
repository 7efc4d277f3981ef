"""A PyTorch stand-in for the app's ONNX runner, so validation runs the app's own inference code.

`TorchRunner.run` has the contract of `app.runner.ModelRunner.run`: float32 N×3×H×W in [0, 1] in,
(cls, cell, boundary) float32 numpy probabilities out.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from training.model import ProbabilityModel


class TorchRunner:
    """Wraps an MT2Net (the teacher, or the student before warm-up ends) in eval mode, without gradients."""

    def __init__(self, net: nn.Module, device: torch.device, amp: bool = False) -> None:
        self.model = ProbabilityModel(net)
        self.device = device
        self.amp = amp and device.type == "cuda"
        self.dtype = np.float32
        self.provider = f"torch-{device.type}"
        self.input_hw: tuple[int, int] | None = None  # any window size

    @torch.no_grad()
    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        was_training = self.model.training
        self.model.eval()
        try:
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
                outputs = self.model(x)
            return tuple(o.float().cpu().numpy() for o in outputs)
        finally:
            self.model.train(was_training)


__all__ = ["TorchRunner"]
