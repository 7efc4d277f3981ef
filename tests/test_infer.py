"""Sliding-window inference: equivalence with a direct pass, stride independence, scales, flipped views, fusion,
resize."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from scipy import ndimage

from app.config import InferenceConfig
from app.errors import ModelError
from app.infer import (
    Plan,
    fuse,
    predict_maps,
    resize,
    restore_size,
    scale_views,
    window_profile,
)
from app.runner import ModelRunner
from tests.onnx_models import contract_model, disc_image, shaped_model

CFG = InferenceConfig()
WINDOWS = CFG.with_overrides(one_pass_max_side=0)  # every image through sliding windows


def rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def direct_pass(model_path, image_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One ONNX Runtime run on the whole image, no windows, no padding."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    batch = (image_u8.transpose(2, 0, 1)[None] / 255.0).astype(np.float32)
    _, cell, boundary = session.run(None, {"image": batch})
    return cell[0, 0], boundary[0, 0]


@pytest.fixture(scope="module")
def textured() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, (1200, 900, 3), dtype=np.uint8)


@pytest.mark.parametrize("cfg", [CFG, WINDOWS], ids=["one pass", "windows"])
def test_small_image_equals_one_direct_pass(tmp_path, cfg):
    """A 300×200 image is zero-padded to 320×224 (one pass) or to one 512 window; a 3×3 blur model then sees
    exactly the direct pass."""
    model = contract_model(tmp_path / "blur.onnx", kernel=3)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    cell, boundary = predict_maps(image, ModelRunner(model, "cpu", threads=1), Plan((1.0,), cfg.stride), cfg)
    ref_cell, ref_boundary = direct_pass(model, image)
    assert cell.shape == (300, 200) and cell.dtype == np.float32
    np.testing.assert_allclose(cell, ref_cell, atol=1e-6)
    np.testing.assert_allclose(boundary, ref_boundary, atol=1e-6)


def test_one_pass_has_no_window_seams(tmp_path):
    """A 9×9 blur over a 1000×700 image: one padded pass equals the direct pass everywhere, while overlapping
    windows differ where a window edge cut the blur's support."""
    model = contract_model(tmp_path / "blur9.onnx", kernel=9, gain=8.0)
    runner = ModelRunner(model, "cpu", threads=1)
    image = np.random.default_rng(4).integers(0, 256, (1000, 700, 3), dtype=np.uint8)
    ref_cell, _ = direct_pass(model, image)
    whole, _ = predict_maps(image, runner, Plan((1.0,), CFG.stride), CFG)
    windows, _ = predict_maps(image, runner, Plan((1.0,), CFG.stride), WINDOWS)
    np.testing.assert_allclose(whole, ref_cell, atol=1e-5)
    assert np.abs(windows - ref_cell).max() > 1e-3
    above, _ = predict_maps(image, runner, Plan((1.0,), CFG.stride), CFG.with_overrides(one_pass_max_side=999))
    np.testing.assert_array_equal(above, windows)  # a side above the limit takes windows


def test_fixed_input_model_takes_windows_even_when_small(tmp_path):
    runner = ModelRunner(shaped_model(tmp_path / "fixed.onnx", input_dims=(1, None, 512, 512)), "cpu")
    cell, _ = predict_maps(np.full((100, 140, 3), 200, np.uint8), runner, Plan((1.0,), CFG.stride), CFG)
    assert cell.shape == (100, 140)


def test_large_image_same_maps_whatever_the_stride(tmp_path, textured):
    """1200×900 with a pointwise model: overlapping, flush-edge windows average back to the direct pass."""
    model = contract_model(tmp_path / "point.onnx", kernel=1)
    runner = ModelRunner(model, "cpu", threads=1)
    ref_cell, ref_boundary = direct_pass(model, textured)
    for stride in (192, 256, 512):
        cell, boundary = predict_maps(textured, runner, Plan((1.0,), stride), WINDOWS)
        assert cell.shape == (1200, 900)
        np.testing.assert_allclose(cell, ref_cell, atol=1e-5, err_msg=f"stride {stride}")
        np.testing.assert_allclose(boundary, ref_boundary, atol=1e-5, err_msg=f"stride {stride}")


def test_window_profile_flat_or_centred():
    assert np.array_equal(window_profile(512, 0.0), np.ones(512, np.float32))
    profile = window_profile(512, 0.125)
    assert profile.shape == (512,) and profile.max() == pytest.approx(1.0)
    assert profile[255] > profile[128] > profile[0] > 0
    np.testing.assert_allclose(profile, profile[::-1])


def test_centre_weighting_shrinks_window_edge_error(tmp_path, textured):
    """A 9×9 blur sees zero padding at window edges; weighting window centres brings the map nearer the direct pass."""
    model = contract_model(tmp_path / "blur9.onnx", kernel=9, gain=8.0)
    runner = ModelRunner(model, "cpu", threads=1)
    ref_cell, _ = direct_pass(model, textured)
    inner = (slice(8, -8), slice(8, -8))  # the image's own border is zero-padded in the direct pass too
    errors = {}
    for sigma in (0.0, 0.125):
        cell, _ = predict_maps(textured, runner, Plan((1.0,), CFG.stride), InferenceConfig(window_sigma=sigma))
        errors[sigma] = float(np.abs(cell - ref_cell)[inner].mean())
    assert errors[0.125] < 0.5 * errors[0.0]


def test_scaled_prediction_returns_original_size_and_finds_discs(tmp_path):
    model = contract_model(tmp_path / "point.onnx")
    image = rgb(disc_image((700, 600), [(150, 150), (500, 400)], 50))
    runner = ModelRunner(model, "cpu", threads=1)
    for scale in (0.5, 1.5):
        cell, boundary = predict_maps(image, runner, Plan((scale,), CFG.stride), CFG)
        assert cell.shape == boundary.shape == (700, 600)
        assert cell[150, 150] > 0.99 and cell[500, 400] > 0.99
        assert cell[10, 10] < 0.01 and cell[150, 300] < 0.01


def test_max_fusion_over_scales(tmp_path):
    model = contract_model(tmp_path / "blur.onnx", kernel=3)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (400, 560, 3), dtype=np.uint8)
    runner = ModelRunner(model, "cpu", threads=1)
    per_scale = [predict_maps(image, runner, Plan((s,), CFG.stride), CFG) for s in (0.6, 1.3)]
    assert not np.allclose(per_scale[0][0], per_scale[1][0])  # the scales really differ
    timings: dict[str, float] = {}
    cell, boundary = predict_maps(image, runner, Plan((0.6, 1.3), CFG.stride), CFG, timings=timings)
    np.testing.assert_array_equal(cell, np.maximum(per_scale[0][0], per_scale[1][0]))
    np.testing.assert_array_equal(boundary, np.maximum(per_scale[0][1], per_scale[1][1]))
    assert set(timings) == {"resize", "model", "fuse"} and all(v > 0 for v in timings.values())


def test_mean_fusion_over_scales(tmp_path):
    runner = ModelRunner(contract_model(tmp_path / "blur.onnx", kernel=3), "cpu", threads=1)
    image = np.random.default_rng(3).integers(0, 256, (400, 560, 3), dtype=np.uint8)
    per_scale = [predict_maps(image, runner, Plan((s,), CFG.stride), CFG) for s in (0.6, 1.3)]
    cell, boundary = predict_maps(image, runner, Plan((0.6, 1.3), CFG.stride), CFG.with_overrides(fusion="mean"))
    np.testing.assert_allclose(cell, (per_scale[0][0] + per_scale[1][0]) / 2, rtol=0, atol=1e-7)
    np.testing.assert_allclose(boundary, (per_scale[0][1] + per_scale[1][1]) / 2, rtol=0, atol=1e-7)


def test_flipped_views_are_aligned_with_the_image(tmp_path):
    """A pointwise model gives the same maps in every orientation, so flipped back, every view is the first."""
    runner = ModelRunner(contract_model(tmp_path / "point.onnx"), "cpu", threads=1)
    image = rgb(disc_image((700, 600), [(150, 150), (500, 420), (90, 520)], 40))  # no mirror symmetry
    views = list(scale_views(image, runner, 1.3, CFG, flips=4))
    assert len(views) == 4 and all(v[0].shape == (910, 780) for v in views)  # the scaled size
    for cell, boundary in views[1:]:
        np.testing.assert_allclose(cell, views[0][0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(boundary, views[0][1], rtol=0, atol=1e-6)


def test_flipped_views_average_a_directional_model(tmp_path):
    """A model that reads each pixel's right neighbour: its mirrored view reads the left one, and 2 flips
    average the two; 4 flips add the up-down mirror, which this model does not see."""
    shift = np.zeros((3, 3), np.float32)
    shift[1, 2] = 1.0
    runner = ModelRunner(contract_model(tmp_path / "shift.onnx", weight=shift, gain=5.0), "cpu", threads=1)
    image = np.random.default_rng(5).integers(0, 256, (300, 700, 3), dtype=np.uint8)
    one = Plan((1.0,), CFG.stride)
    plain = predict_maps(image, runner, one, CFG)
    mirrored = [np.fliplr(m) for m in predict_maps(np.ascontiguousarray(image[:, ::-1]), runner, one, CFG)]
    assert np.abs(plain[0] - mirrored[0]).max() > 0.1  # the two views really differ
    two = predict_maps(image, runner, Plan((1.0,), CFG.stride, flips=2), CFG)
    np.testing.assert_allclose(two[0], (plain[0] + mirrored[0]) / 2, rtol=0, atol=1e-6)
    four = predict_maps(image, runner, Plan((1.0,), CFG.stride, flips=4), CFG)
    np.testing.assert_allclose(four[0], two[0], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="flips must be one of 1, 2, 4"):
        predict_maps(image, runner, Plan((1.0,), CFG.stride, flips=3), CFG)


def test_views_of_a_rescaled_image_are_averaged_before_resizing_back(tmp_path):
    """Resizing is linear, so averaging the views at the scaled size and resizing once gives the mean of the
    views resized one by one."""
    shift = np.zeros((3, 3), np.float32)
    shift[1, 2] = 1.0
    runner = ModelRunner(contract_model(tmp_path / "shift.onnx", weight=shift, gain=5.0), "cpu", threads=1)
    image = np.random.default_rng(6).integers(0, 256, (300, 700, 3), dtype=np.uint8)
    views = list(scale_views(image, runner, 0.6, CFG, flips=2))
    assert views[0][0].shape == (180, 420)
    one_by_one = [restore_size(v, 300, 700) for v in views]
    cell, boundary = predict_maps(image, runner, Plan((0.6,), CFG.stride, flips=2), CFG)
    assert cell.shape == (300, 700)
    np.testing.assert_allclose(cell, (one_by_one[0][0] + one_by_one[1][0]) / 2, rtol=0, atol=1e-6)
    np.testing.assert_allclose(boundary, (one_by_one[0][1] + one_by_one[1][1]) / 2, rtol=0, atol=1e-6)


def test_fuse_leaves_its_inputs_alone():
    a, b = np.ones((4, 4), np.float32), np.full((4, 4), 3.0, np.float32)
    pairs = [(a, a), (b, b)]
    np.testing.assert_array_equal(fuse(pairs, "mean")[0], np.full((4, 4), 2.0))
    np.testing.assert_array_equal(fuse(pairs, "max")[1], b)
    assert (a == 1).all() and (b == 3).all()
    fresh = [(a.copy(), a.copy()), (b, b)]
    assert fuse(fresh, "max", owned=True)[0] is fresh[0][0]  # handed-over maps are reused, not copied
    with pytest.raises(ValueError, match="fusion"):
        fuse(pairs, "median")
    with pytest.raises(ValueError, match="at least one"):
        fuse([], "max")


def test_bad_arguments_refused(tmp_path):
    runner = ModelRunner(contract_model(tmp_path / "m.onnx"), "cpu", threads=1)
    image = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="stride"):
        predict_maps(image, runner, Plan((1.0,), 600), CFG)
    with pytest.raises(ValueError, match="uint8"):
        predict_maps(image.astype(np.float32), runner, Plan((1.0,), CFG.stride), CFG)
    with pytest.raises(ValueError, match="scale"):
        predict_maps(image, runner, Plan((0.0,), CFG.stride), CFG)
    with pytest.raises(ValueError, match="scale"):
        predict_maps(image, runner, Plan((), CFG.stride), CFG)


def test_fixed_window_model_must_match_the_window(tmp_path):
    runner = ModelRunner(shaped_model(tmp_path / "fixed.onnx", input_dims=(1, None, 256, 256)), "cpu")
    with pytest.raises(ModelError, match="256×256"):
        predict_maps(np.zeros((100, 100, 3), np.uint8), runner, Plan((1.0,), CFG.stride), CFG)


@pytest.mark.parametrize("shape", [(50, 60), (74, 106), (37, 53), (37, 80)])
def test_enlarging_matches_scipy_half_pixel_bilinear(shape):
    source = np.random.default_rng(1).random((37, 53), dtype=np.float32)
    expected = ndimage.zoom(source, (shape[0] / 37, shape[1] / 53), order=1, grid_mode=True, mode="nearest")
    got = resize(source, *shape)
    assert got.dtype == np.float32 and got.flags.writeable
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_resize_keeps_dtype_channels_and_flat_values():
    image = np.full((300, 200, 3), 77, np.uint8)
    image[..., 2] = 200
    for shape in [(451, 97), (120, 80), (300, 200)]:
        out = resize(image, *shape)
        assert out.dtype == np.uint8 and out.shape == (*shape, 3)
        assert (out[..., :2] == 77).all() and (out[..., 2] == 200).all()
    flat = resize(np.full((90, 70), 0.25, np.float64), 31, 200)
    assert flat.dtype == np.float32 and np.allclose(flat, 0.25)


def test_shrinking_counts_every_pixel():
    """One bright row in four, shrunk by 4: an antialiased resize shows about their mean (a quarter of the
    maximum) on every row, in images and maps alike; bilinear sampling would read rows 1 and 2 of each four and
    see none of them."""
    image = np.zeros((64, 48, 3), np.uint8)
    image[::4] = 255
    out = resize(image, 16, 12)
    assert 32 <= out.min() and out.max() <= 96
    maps = resize(image[..., 0] / np.float32(255), 16, 12)
    assert 0.12 <= maps.min() and maps.max() <= 0.38


def test_resize_enlarges_uint8_with_rounding():
    row = np.zeros((1, 2, 3), np.uint8)
    row[0, 1] = 255
    assert resize(row, 1, 4)[0, :, 0].tolist() == [0, 64, 191, 255]
