"""Loading an exported ONNX model back into the network: names, folded BatchNorms, calibration, refusals, and
fine-tuning the shipped weights through `python -m training train --init-onnx`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from app.manifest import sha256_file
from tests.training_data import TINY, write_dataset
from training.__main__ import cli
from training.checkpoint import load_checkpoint
from training.config import load_config
from training.export import export_fp32, slim
from training.model import ModelConfig, MT2Net, ProbabilityModel
from training.onnx_weights import (
    PARITY_LIMIT,
    load_folded_weights,
    load_onnx_weights,
    node_module_name,
    parity,
    scoped_names,
)
from training.parity import cell_like_inputs, max_abs_diff
from training.trainer import LAST

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = ModelConfig(decoder_channels=(8, 8, 8, 8, 8))


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def images(count: int = 2, size: int = 64) -> torch.Tensor:
    """`count` microscopy-like float32 images in [0, 1] (N×3×size×size)."""
    batch = np.concatenate([cell_like_inputs(size, size, seed) for seed in range(count)])
    return torch.from_numpy(batch[:count].astype(np.float32))


def largest_diff(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> float:
    return max_abs_diff(tuple(t.numpy() for t in a), tuple(t.numpy() for t in b))


def trained_like(config: ModelConfig, seed: int) -> MT2Net:
    """A network whose BatchNorms carry non-trivial statistics and affine values, as a trained one does."""
    torch.manual_seed(seed)
    net = MT2Net(config)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        net.train()
        for _ in range(3):
            net(images(2) * 0.8 + 0.1)
    return net.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[MT2Net, Path]:
    """A tiny network exported and simplified exactly as `training export` does (BatchNorms folded)."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("onnx")
    net = trained_like(TINY_MODEL, seed=3)
    raw = export_fp32(net, folder / "raw.onnx")
    return net, slim(raw, folder / "tiny.onnx")


def test_node_names_map_to_module_paths() -> None:
    assert node_module_name("/net/encoder/features.1/conv/conv.0/conv.0.0/Conv") == "encoder.features.1.conv.0.0"
    assert node_module_name("/net/decoder/x_0_2/conv2/conv2.0/Conv") == "decoder.x_0_2.conv2.0"
    assert node_module_name("/net/cls/cls.0/Conv") == "cls.0"
    names = scoped_names(MT2Net(TINY_MODEL))
    assert names["decoder.x_0_2.conv2.0"] == "decoder.blocks.x_0_2.conv2.0"
    assert names["cls.0"] == "heads.cls.0"


def test_folded_file_loads_back_exactly_and_trains_from_where_it_was(exported) -> None:
    original, path = exported
    batch = images(2)
    net = MT2Net(TINY_MODEL)  # another random start: every weight must come from the file
    assert parity(net, path, batch) > 1e-2
    measured = load_onnx_weights(net, path, batch)
    assert measured <= PARITY_LIMIT
    with torch.no_grad():
        want = ProbabilityModel(original).eval()(batch)
        got_eval = ProbabilityModel(net).eval()(batch)
        got_train = ProbabilityModel(net).train()(batch)
    assert largest_diff(want, got_eval) <= PARITY_LIMIT
    # Calibrated BatchNorms in train mode (batch statistics of the same images) reproduce eval mode.
    assert largest_diff(got_eval, got_train) < 1e-3


def test_calibration_is_what_keeps_train_mode_close(exported) -> None:
    _, path = exported
    batch = images(2)
    net = MT2Net(TINY_MODEL)
    load_folded_weights(net, path)  # identity statistics, no calibration
    assert parity(net, path, batch) <= PARITY_LIMIT  # eval mode is exact already
    with torch.no_grad():
        eval_out = ProbabilityModel(net).eval()(batch)
        train_out = ProbabilityModel(net).train()(batch)
    assert largest_diff(eval_out, train_out) > 1e-2


def test_a_file_of_another_architecture_is_refused(exported) -> None:
    _, path = exported
    wider = MT2Net(ModelConfig(decoder_channels=(16, 16, 16, 16, 16)))
    with pytest.raises(ValueError, match=r"tiny\.onnx: .*has shape"):
        load_onnx_weights(wider, path, images(1))
    other_encoder = MT2Net(ModelConfig(encoder="resnet18", decoder_channels=(8, 8, 8, 8, 8)))
    with pytest.raises(ValueError, match="convolutions do not match the resnet18 network"):
        load_onnx_weights(other_encoder, path, images(1))


def test_an_encoder_with_modules_the_forward_pass_skips_loads_back(tmp_path) -> None:
    # smp's EfficientNet keeps the classifier's `_conv_head`, which never runs and so is not in the file.
    config = ModelConfig(encoder="efficientnet-b0", decoder_channels=(8, 8, 8, 8, 8))
    original = trained_like(config, seed=5)
    assert "encoder._conv_head" in scoped_names(original)
    path = slim(export_fp32(original, tmp_path / "raw.onnx"), tmp_path / "b0.onnx")
    batch = images(2)
    assert load_onnx_weights(MT2Net(config), path, batch) <= PARITY_LIMIT


def test_a_file_that_is_not_onnx_is_refused_in_one_line(tmp_path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match=r"^broken\.onnx: not a readable ONNX model"):
        load_onnx_weights(MT2Net(TINY_MODEL), bad, images(1))


def test_the_shipped_weights_load_into_the_ship_preset() -> None:
    net = MT2Net(load_config("ship").model)
    measured = load_onnx_weights(net, ROOT / "weights" / "mt2.fp32.onnx", images(2, 128))
    assert measured <= PARITY_LIMIT


def test_cli_fine_tunes_an_exported_model(exported, tmp_path) -> None:
    _, path = exported
    data = write_dataset(tmp_path / "data", labelled=4, unlabelled=2)
    run = tmp_path / "run"
    args = ["train", "--config", "cpu", "--data", str(data), "--out", str(run), "--epochs", "1", *TINY,
            "--set", "teacher.warmup_epochs=0", "--init-onnx", str(path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "tiny.onnx loaded, BatchNorm calibrated on 3 crops" in result.output
    assert "random weights" not in result.output
    assert "teacher copied from the student" in result.output
    started = load_checkpoint(run / "best.pt")["init_onnx"]
    assert started["file"] == "tiny.onnx" and started["sha256"] == sha256_file(path)
    assert started["parity"] <= PARITY_LIMIT
    result = CliRunner().invoke(cli, [*args[:-2], "--resume", str(run), "--init-onnx", str(path)])
    assert result.exit_code != 0 and "--resume and --init-onnx name different starting points" in result.output
    # A resumed run keeps the record of where it started.
    result = CliRunner().invoke(cli, ["train", "--data", str(data), "--resume", str(run), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(run / LAST)["init_onnx"] == started
