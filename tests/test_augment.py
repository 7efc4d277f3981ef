"""Views, jitter and CutMix: alignment of images with targets and of weak with strong views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.infer import resize as app_resize
from training.augment import (
    Geometry,
    apply_cutmix,
    base_scale,
    cutmix_boxes,
    draw_base_scale,
    extract_region,
    jitter,
    labelled_view,
    move_channels,
    orient,
    photometric,
    resize,
    sample_geometry,
    single_signal,
    stain_shift,
    stained,
    unlabelled_views,
    view,
)
from training.config import AugmentConfig

torch.set_num_threads(1)


def coded_pair(h: int = 40, w: int = 52, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An image whose red channel encodes the class map, and targets (cls, cell, boundary) derived from it."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 3, (h, w)).astype(np.float16)
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = (cls * 100).astype(np.uint8)
    image[..., 1] = 60
    cell = (cls == 1).astype(np.float16)
    boundary = (cls == 2).astype(np.float16)
    return image, np.stack([cls, cell, boundary], -1)


def test_extract_region_pads_with_zeros_outside_the_image():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = extract_region(array, -1, 2, 3)
    assert out.shape == (3, 3)
    assert np.array_equal(out[0], [0, 0, 0])
    assert np.array_equal(out[1], [2, 3, 0]) and np.array_equal(out[2], [6, 7, 0])


def test_geometry_stays_within_or_pads_small_images():
    cfg = AugmentConfig(crop=64, scale_min=0.5, scale_max=2.0)
    rng = np.random.default_rng(1)
    sizes = []
    for _ in range(200):
        g = sample_geometry(rng, (100, 30), cfg)
        sizes.append(g.size)
        assert 32 <= g.size <= 128 and 0 <= g.rot90 <= 3
        if g.size <= 100:
            assert 0 <= g.y0 <= 100 - g.size
        if g.size > 30:  # narrower than the square: the image sits inside it
            assert -(g.size - 30) <= g.x0 <= 0
    assert min(sizes) < 45 and max(sizes) > 90  # both ends of the scale range are drawn


def test_base_scale_brings_objects_to_the_configured_diameter():
    cfg = AugmentConfig(crop=64, scale_min=1.0, scale_max=1.0, diameter=30.0)
    assert base_scale(15.0, cfg) == pytest.approx(2.0) and base_scale(60.0, cfg) == pytest.approx(0.5)
    assert base_scale(3.0, cfg) == 4.0 and base_scale(600.0, cfg) == 0.25  # clipped
    assert base_scale(None, cfg) == 1.0  # unknown size: native
    assert base_scale(15.0, AugmentConfig(diameter=0.0)) == 1.0  # switched off: MT2's native jitter
    assert sample_geometry(np.random.default_rng(0), (200, 200), cfg, base_scale(15.0, cfg)).size == 32


def test_a_share_of_draws_keeps_native_sizes():
    cfg = AugmentConfig(diameter=30.0, diameter_p=0.25)
    rng = np.random.default_rng(0)
    draws = [draw_base_scale(rng, 15.0, cfg) for _ in range(4000)]
    assert set(draws) == {1.0, 2.0} and np.mean(np.equal(draws, 2.0)) == pytest.approx(0.25, abs=0.03)
    untouched = np.random.default_rng(1)
    assert draw_base_scale(untouched, None, cfg) == 1.0 and draw_base_scale(untouched, 15.0, AugmentConfig()) == 1.0
    assert untouched.random() == np.random.default_rng(1).random()  # no number drawn when there is no base scale
    assert draw_base_scale(rng, 15.0, AugmentConfig(diameter=30.0)) == 2.0  # diameter_p 1: every draw


def test_views_show_objects_at_the_configured_diameter_whatever_their_size():
    """A disc of diameter d reaches the crop at about cfg.diameter x the jitter, for small and large d."""
    cfg = AugmentConfig(crop=64, scale_min=0.8, scale_max=1.25, diameter=24.0, flips=False, rot90=False,
                        brightness=0.0, contrast=0.0)
    for d in (8, 48):
        yy, xx = np.mgrid[: 4 * d, : 4 * d]
        disc = (yy - 2 * d) ** 2 + (xx - 2 * d) ** 2 <= (d / 2) ** 2
        targets = np.stack([disc, disc, np.zeros_like(disc)], -1).astype(np.float16)
        image = np.repeat(disc[..., None] * np.uint8(200), 3, axis=2)
        whole = 0
        for seed in range(12):
            _, cls, _, _ = labelled_view(image, targets, np.random.default_rng(seed), cfg, base_scale(d, cfg))
            inside = cls == 1
            if inside.any() and not (inside[0].any() or inside[-1].any() or inside[:, 0].any() or inside[:, -1].any()):
                whole += 1
                seen = np.sqrt(4 * float(inside.sum()) / np.pi)
                assert 24 * 0.8 * 0.9 <= seen <= 24 * 1.25 * 1.1
        assert whole >= 3  # the disc was seen whole in several views


def test_orient_matches_numpy():
    t = torch.arange(12.0).reshape(1, 3, 4)
    g = Geometry(0, 0, 3, flip_y=True, flip_x=False, rot90=1)
    expected = np.rot90(np.flip(t.numpy()[0], 0), 1)
    assert np.array_equal(orient(t, g)[0].numpy(), expected)


@pytest.mark.parametrize("seed", range(6))
def test_labelled_view_keeps_image_and_targets_aligned(seed):
    image, targets = coded_pair(seed=seed)
    cfg = AugmentConfig(crop=32, scale_min=1.0, scale_max=1.0, brightness=0.0, contrast=0.0)
    img, cls, cell, boundary = labelled_view(image, targets, np.random.default_rng(seed), cfg)
    assert img.shape == (3, 32, 32) and cls.shape == (32, 32) and cell.shape == boundary.shape == (1, 32, 32)
    assert cls.dtype == torch.int64 and img.dtype == torch.float32
    decoded = torch.round(img[0] * 255 / 100).long()
    inside = img[1] > 0  # padding (outside the image) is zero in the image and background in the targets
    assert torch.equal(decoded[inside], cls[inside])
    assert torch.equal(cell[0] == 1, cls == 1) and torch.equal(boundary[0] == 1, cls == 2)


def test_rescaled_view_keeps_classes_and_ranges():
    image, targets = coded_pair(80, 80)
    cfg = AugmentConfig(crop=48)
    img, cls, cell, boundary = labelled_view(image, targets, np.random.default_rng(3), cfg)
    assert set(cls.unique().tolist()) <= {0, 1, 2}
    for t in (img, cell, boundary):
        assert t.min() >= 0 and t.max() <= 1


@pytest.mark.parametrize("size", [24, 50, 96, 160])
def test_training_and_the_app_resize_images_alike(size):
    """The trainer shows the network scaled views through `resize`; the app scales images through
    `app.infer.resize`. Shrunk (antialiased) or enlarged, they agree within a grey level's rounding."""
    image = np.random.default_rng(size).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    trained = resize(torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1), size).permute(1, 2, 0).numpy()
    app = app_resize(image, size, size).astype(np.float32)
    assert np.abs(trained - app).max() <= 1.5


def test_jitter_changes_brightness_and_contrast_but_never_hue():
    grey = torch.full((3, 8, 8), 0.4)
    grey[:, :4] = 0.6
    out = jitter(grey, np.random.default_rng(0), AugmentConfig(brightness=0.5, contrast=0.5))
    assert not torch.allclose(out, grey)
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[1], out[2])  # grey stays grey
    same = jitter(grey, np.random.default_rng(0), AugmentConfig(brightness=0.0, contrast=0.0))
    assert torch.allclose(same, grey)


def test_weak_and_strong_views_show_the_same_pixels():
    image, _ = coded_pair(60, 60)
    cfg = AugmentConfig(crop=32, contrast=0.0, brightness=0.4)
    weak, strong = unlabelled_views(image, np.random.default_rng(5), cfg)
    assert weak.shape == strong.shape == (3, 32, 32)
    # Brightness only: strong = clip(factor * weak), so the ratio is one constant wherever weak is lit.
    lit = (weak > 0.05) & (strong < 0.99)
    ratio = strong[lit] / weak[lit]
    assert float(ratio.std()) < 1e-4
    plain = AugmentConfig(crop=32, contrast=0.0, brightness=0.0)
    weak2, strong2 = unlabelled_views(image, np.random.default_rng(5), plain)
    assert torch.allclose(weak2, strong2, atol=1e-6)


def test_view_of_float16_targets_is_float32():
    targets = np.ones((10, 10, 2), np.float16)
    out = view(targets, Geometry(0, 0, 10, False, False, 0), 20)
    assert out.dtype == torch.float32 and out.shape == (2, 20, 20)


def test_cutmix_boxes_probability_and_sources():
    rng = np.random.default_rng(0)
    assert cutmix_boxes(rng, 4, 32, 0.0) == [None] * 4
    assert cutmix_boxes(rng, 1, 32, 1.0) == [None]
    boxes = [b for _ in range(50) for b in cutmix_boxes(rng, 4, 32, 0.5)]
    used = [b for b in boxes if b is not None]
    assert 0.3 < len(used) / len(boxes) < 0.7
    for i, box in enumerate(boxes):
        if box is not None:
            source, y0, y1, x0, x1 = box
            assert source != i % 4 and 0 <= y0 < y1 <= 32 and 0 <= x0 < x1 <= 32


def test_cutmix_pastes_the_same_box_into_images_and_targets():
    images = torch.stack([torch.full((3, 16, 16), float(i)) for i in range(3)])
    targets = torch.stack([torch.full((16, 16), i) for i in range(3)])
    boxes = [(2, 0, 8, 4, 12), None, (0, 5, 16, 0, 3)]
    mixed_images = apply_cutmix(images, boxes)
    mixed_targets = apply_cutmix(targets, boxes)
    assert torch.equal(images[0], torch.zeros(3, 16, 16))  # the input is untouched
    assert torch.all(mixed_images[0, :, 0:8, 4:12] == 2) and torch.all(mixed_images[0, :, 8:, :] == 0)
    assert torch.equal(mixed_images[1], images[1])
    assert torch.equal(mixed_images[:, 0].long(), mixed_targets)


REAL = dict(gamma=0.5, blur_p=1.0, noise_p=1.0, quantize_p=1.0, channel_p=1.0)


def single_channel_pair(h: int = 48, w: int = 56, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence-like image (signal in green only) whose brightness encodes the class map."""
    image, targets = coded_pair(h, w, seed)
    single = np.zeros_like(image)
    single[..., 1] = image[..., 0] + 40 * (image[..., 0] > 0)
    return single, targets


@pytest.mark.parametrize("seed", range(8))
def test_labels_follow_every_geometric_transform_under_the_real_data_augmentation(seed):
    """With scale, flips, rotations and all photometric changes on, targets are the views of the same geometry
    as the image: the targets equal those of the image's own noiseless view."""
    image, targets = coded_pair(seed=seed)
    on = AugmentConfig(crop=32, scale_min=0.5, scale_max=2.0, **REAL)
    plain = AugmentConfig(crop=32, scale_min=0.5, scale_max=2.0, brightness=0.0, contrast=0.0)
    img, cls, cell, boundary = labelled_view(image, targets, np.random.default_rng(seed), on)
    geom = sample_geometry(np.random.default_rng(seed), image.shape[:2], plain)
    expected = view(targets[..., :1], geom, 32, nearest=True)[0].round().long()
    assert torch.equal(cls, expected)
    assert torch.equal(cell[0], view(targets[..., 1:2], geom, 32)[0].clamp(0, 1))
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0


@pytest.mark.parametrize("seed", range(6))
def test_channel_moves_keep_labels_and_the_signal(seed):
    image, targets = single_channel_pair(seed=seed)
    moved_cfg = AugmentConfig(crop=32, scale_min=1.0, scale_max=1.0, brightness=0.0, contrast=0.0, channel_p=1.0)
    plain_cfg = AugmentConfig(crop=32, scale_min=1.0, scale_max=1.0, brightness=0.0, contrast=0.0)
    moved = labelled_view(image, targets, np.random.default_rng(seed), moved_cfg)
    plain = labelled_view(image, targets, np.random.default_rng(seed), plain_cfg)
    for a, b in zip(moved[1:], plain[1:]):
        assert torch.equal(a, b)  # labels untouched by the channel move
    signal = plain[0][1]
    carriers = [c for c in range(3) if bool(moved[0][c].any())]
    assert carriers or not bool(signal.any())
    for c in carriers:
        assert torch.allclose(moved[0][c], signal, atol=1e-6)
    for c in set(range(3)) - set(carriers):
        assert not bool(moved[0][c].any())


def test_channel_moves_reach_every_placement_and_leave_colour_images_alone():
    grey = torch.rand(1, 16, 16).repeat(3, 1, 1)
    seen = {tuple(bool(c.any()) for c in move_channels(grey, np.random.default_rng(s), 1.0)) for s in range(60)}
    assert len(seen) == 7  # every non-empty subset of R, G, B
    colour = torch.rand(3, 16, 16)
    assert not single_signal(colour)
    assert torch.equal(move_channels(colour, np.random.default_rng(0), 1.0), colour)


def test_photometric_changes_are_off_by_default_and_stay_in_range():
    img = torch.rand(3, 32, 32)
    assert torch.equal(photometric(img, np.random.default_rng(0), AugmentConfig()), img)
    out = photometric(img, np.random.default_rng(1), AugmentConfig(**REAL))
    assert out.shape == img.shape and not torch.equal(out, img)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    grey = torch.rand(1, 32, 32).repeat(3, 1, 1)
    noisy = photometric(grey, np.random.default_rng(2), AugmentConfig(noise_p=1.0, blur_p=1.0, gamma=0.5))
    assert torch.equal(noisy[0], noisy[1]) and torch.equal(noisy[1], noisy[2])  # grey stays grey: no hue


def test_quantisation_leaves_few_levels():
    img = torch.linspace(0, 1, 32 * 32).reshape(1, 32, 32).repeat(3, 1, 1)
    cfg = AugmentConfig(quantize_p=1.0, quantize_levels=4)
    counts = [len(torch.unique(photometric(img, np.random.default_rng(s), cfg))) for s in range(20)]
    assert min(counts) <= 64 and max(counts) <= 256


def stained_pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A purple-on-pink tissue-like colour image and its targets (`coded_pair`'s classes)."""
    image, targets = coded_pair(seed=seed)
    cls = targets[..., 0]
    colour = np.where(cls[..., None] == 1, np.array([120, 60, 150]), np.array([235, 190, 215]))
    return colour.astype(np.uint8), targets


@pytest.mark.parametrize("seed", range(6))
def test_stain_variation_keeps_labels_and_changes_colour_only(seed):
    image, targets = stained_pair(seed)
    on = AugmentConfig(crop=32, brightness=0.0, contrast=0.0, stain_p=1.0, stain_scale=0.2, stain_shift=0.2)
    off = AugmentConfig(crop=32, brightness=0.0, contrast=0.0)
    varied = labelled_view(image, targets, np.random.default_rng(seed), on)
    plain = labelled_view(image, targets, np.random.default_rng(seed), off)
    for a, b in zip(varied[1:], plain[1:]):
        assert torch.equal(a, b)  # the same geometry: the targets of the plain view
    assert not torch.allclose(varied[0], plain[0], atol=1e-3)
    assert float(varied[0].min()) >= 0.0 and float(varied[0].max()) <= 1.0


def test_stain_variation_touches_colour_images_only_and_is_exact_at_zero():
    colour = torch.from_numpy(stained_pair(1)[0] / 255.0).permute(2, 0, 1).float()
    assert stained(colour)
    zero = AugmentConfig(stain_p=1.0, stain_scale=0.0, stain_shift=0.0)
    assert torch.allclose(stain_shift(colour, np.random.default_rng(0), zero), colour.clamp(1 / 255, 1), atol=1e-5)
    on = AugmentConfig(stain_p=1.0, stain_scale=0.1, stain_shift=0.1)
    changes = [float((stain_shift(colour, np.random.default_rng(s), on) - colour).abs().mean()) for s in range(10)]
    assert 0.005 < np.mean(changes) < 0.1  # small perturbations of the stain, not a new image
    grey = torch.rand(1, 16, 16).repeat(3, 1, 1)
    fluorescence = torch.zeros(3, 16, 16)
    fluorescence[1:] = torch.rand(2, 16, 16)  # two signals, red empty: not a stain
    for image in (grey, fluorescence):
        assert not stained(image)
        assert torch.equal(stain_shift(image, np.random.default_rng(0), on), image)
    assert torch.equal(stain_shift(colour, np.random.default_rng(0), AugmentConfig()), colour)  # off by default
