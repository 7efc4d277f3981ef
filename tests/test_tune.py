"""Tuning: the grid, the scoring, the manifest's postprocess table and `python -m app tune` end to end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from app.cli import cli
from app.config import POSTPROCESS_FIELDS, InferenceConfig, TuneGrid
from app.errors import ModelError
from app.infer import Plan, predict_maps
from app.manifest import class_settings, postprocess_settings, store_postprocess, verify_model, write_manifest
from app.metric import image_scores
from app.normalize import read_normalized
from app.postprocess import instance_map
from app.reader import labelled_pairs
from app.runner import ModelRunner
from app.tune import (
    Scored,
    Views,
    candidate_settings,
    class_choices,
    collect_scores,
    confirm_scores,
    grid_settings,
    image_views,
    planned_scales,
    rank,
    score_views,
)
from tests.onnx_models import contract_model, disc_image, domed_pair

SHAPE = (96, 128)
# Discs of radius 4 (49 px): every seed is smaller than MT2's S_min of 64, so the defaults find no cell.
CENTRES = [(20, 20), (20, 64), (24, 104), (60, 30), (70, 80)]
RADIUS = 4


def disc_labels(shape: tuple[int, int], centres: list[tuple[int, int]], radius: int) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint16)
    for value, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = value
    return labels


def labelled_folder(root: Path, count: int = 2) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(1, count + 1):
        centres = [(cy, cx + 2 * i) for cy, cx in CENTRES]
        iio.imwrite(root / "images" / f"cell_{i:05d}.png", disc_image(SHAPE, centres, RADIUS))
        tifffile.imwrite(root / "labels" / f"cell_{i:05d}_label.tiff", disc_labels(SHAPE, centres, RADIUS))
    return root


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    folder = tmp_path / "weights"
    contract_model(folder / "mt2.fp32.onnx")
    write_manifest(folder, ["mt2.fp32.onnx"], {"note": "test weights"})
    return folder


def test_grid_skips_seed_below_cell_threshold() -> None:
    grid = TuneGrid(flips=(2, 1), fusions=("max",), cell_thresholds=(0.2, 0.6), seed_thresholds=(0.5, 0.8),
                    min_seed_areas=(4, 64), seed_split_heights=(0.0,), min_area_ratios=(0.0,))
    settings = grid_settings(grid)
    assert len(settings) == 12  # (0.6, 0.5, *) is skipped, for each flip count
    assert all(s["seed_threshold"] >= s["cell_threshold"] for s in settings)
    assert all(tuple(s) == POSTPROCESS_FIELDS for s in settings)
    assert [s["flips"] for s in settings[::6]] == [1, 2]  # the cheaper views first, so ties favour them


def test_candidates_hold_the_config_reference_once() -> None:
    grid = TuneGrid(flips=(1,), fusions=("mean",), cell_thresholds=(0.3,), seed_thresholds=(0.8,), min_seed_areas=(64,),
                    seed_split_heights=(0.0,), min_area_ratios=(0.0,))
    candidates = candidate_settings(InferenceConfig(), grid)
    assert candidates[-1] == {"flips": 1, "fusion": "max", "cell_threshold": 0.3, "seed_threshold": 0.8,
                              "min_seed_area": 64, "seed_split_height": 0.0, "min_area_ratio": 0.0}
    assert len(candidates) == 2
    assert len(candidate_settings(InferenceConfig(fusion="mean"), grid)) == 1
    stored = {**candidates[0], "min_seed_area": 16}
    with_stored = candidate_settings(InferenceConfig(), grid, [stored, stored, candidates[0]])
    assert with_stored == [*candidates, stored]  # the stored settings are scored too, each once


def _views(truth: np.ndarray, cell: np.ndarray) -> Views:
    """Two scales of two views each; only the mean of scale 2's views, or the max over scales, sees the cells."""
    empty = np.zeros_like(cell)
    return Views("a", truth, (((empty, empty), (empty, empty)), ((cell, empty), (cell, empty))))


def test_scoring_finds_a_small_seed_area_for_small_cells() -> None:
    truth = disc_labels(SHAPE, CENTRES, RADIUS)
    cell = (truth > 0).astype(np.float32)
    grid = TuneGrid(flips=(1,), fusions=("max",), cell_thresholds=(0.3,), seed_thresholds=(0.8,),
                    min_seed_areas=(16, 128), seed_split_heights=(0.0,), min_area_ratios=(0.0,))
    candidates = candidate_settings(InferenceConfig(), grid)
    trials = rank(candidates, [Scored("a", score_views(_views(truth, cell), candidates, InferenceConfig()))])
    assert [t.settings["min_seed_area"] for t in trials] == [16, 128, 64]  # the config's own values come last
    assert trials[0].f1 == 1.0 and trials[1].f1 == 0.0 and trials[2].f1 == 0.0
    with pytest.raises(ValueError, match="no labelled images"):
        rank(candidates, [])


def test_scoring_fuses_views_and_scales_as_predict_does() -> None:
    truth = disc_labels(SHAPE, CENTRES, RADIUS)
    cell = (truth > 0).astype(np.float32)
    views = _views(truth, cell)
    np.testing.assert_array_equal(views.fused(2, "max")[0], cell)
    np.testing.assert_array_equal(views.fused(1, "mean")[0], cell / 2)  # the mean of the two scales
    np.testing.assert_array_equal(views.per_scale[1][0][0], cell)  # fusing never writes into the views
    settings = [{"flips": 1, "fusion": f, "cell_threshold": 0.1, "seed_threshold": s, "min_seed_area": 4}
                for f, s in (("max", 0.9), ("mean", 0.9), ("mean", 0.4))]
    assert score_views(views, settings, InferenceConfig()).tolist() == [1.0, 0.0, 1.0]


def test_scoring_finds_the_seed_split_for_touching_cells() -> None:
    """Two touching cells whose maps share one seed: only the split separates them, so the tuner prefers it."""
    cell = domed_pair()
    truth = np.where(cell > 0, 1 + (np.arange(cell.shape[1]) >= 59), 0).astype(np.int32)
    grid = TuneGrid(flips=(1,), fusions=("max",), cell_thresholds=(0.1,), seed_thresholds=(0.5,), min_seed_areas=(8,),
                    seed_split_heights=(0.0, 0.15), min_area_ratios=(0.0,))
    candidates = grid_settings(grid)
    empty = np.zeros_like(cell)
    views = Views("a", truth, (((cell, empty),),))
    trials = rank(candidates, [Scored("a", score_views(views, candidates, InferenceConfig()))])
    assert [(t.settings["seed_split_height"], t.f1) for t in trials] == [(0.15, 1.0), (0.0, pytest.approx(2 / 3))]


def test_reused_watersheds_score_like_direct_post_processing() -> None:
    """Candidates that differ only in the small-cell filter share one watershed; the scores are those of
    `instance_map` run for each candidate."""
    truth = disc_labels(SHAPE, CENTRES, RADIUS)
    cell = (truth > 0).astype(np.float32)
    cell[disc_labels(SHAPE, [(SHAPE[0] - 8, SHAPE[1] - 8)], 1) > 0] = 1.0  # a 5-px speck the filter can drop
    views = Views("a", truth, (((cell, np.zeros_like(cell)),),), view_scale=1.0)
    grid = TuneGrid(flips=(1,), fusions=("max", "mean"), cell_thresholds=(0.3,), seed_thresholds=(0.5, 0.8),
                    min_seed_areas=(4, 64), seed_split_heights=(0.0, 0.15), min_area_ratios=(0.0, 0.2))
    candidates = grid_settings(grid)
    cfg = InferenceConfig()
    expected = [image_scores(truth, instance_map(cell, np.zeros_like(cell), cfg.with_overrides(**c))).f1
                for c in candidates]
    assert score_views(views, candidates, cfg).tolist() == expected
    one = {"fusion": "max", "seed_threshold": 0.5, "min_seed_area": 4, "seed_split_height": 0.0}
    by_ratio = {c["min_area_ratio"]: f1 for c, f1 in zip(candidates, expected) if one.items() <= c.items()}
    assert by_ratio[0.2] > by_ratio[0.0]  # the filter matters here, so a wrongly reused watershed would show


@pytest.mark.parametrize("mode, scales", [("fixed", (1.5,)), ("fixed-grey", (0.8, 1.0, 1.2)), ("adaptive", None)])
def test_image_views_match_predict(tmp_path: Path, weights: Path, mode: str, scales) -> None:
    from app.diameter import choose_scales, size_estimate
    from app.normalize import is_fluorescence

    data = labelled_folder(tmp_path / "data", count=1)
    path = data / "images" / "cell_00001.png"
    runner = ModelRunner(weights / "mt2.fp32.onnx", "cpu", 1)
    cfg = InferenceConfig(flips=4, fusion="mean", scale_mode=mode.split("-")[0], min_seed_area=4,
                          fluorescence_grey_median=0.0 if mode == "fixed-grey" else 50.0)
    per_scale, planned, shape, _ = image_views(path, runner, cfg, flips=4)
    assert shape == SHAPE
    views = Views("a", np.zeros(SHAPE), per_scale, Plan(planned, cfg.stride).view_scale)
    image = read_normalized(path, cfg.max_pixels, cfg)
    if scales is None:  # the discs' own size decides: 2 * RADIUS against the target diameter
        scales = choose_scales(size_estimate(image, runner, cfg), is_fluorescence(image, cfg), cfg)
        assert scales[1] == pytest.approx(cfg.target_diameter / (2 * RADIUS), rel=0.15)
    assert planned == tuple(scales)
    assert len(views.per_scale) == len(scales) and all(len(v) == 4 for v in views.per_scale)
    for flips, fusion in ((4, "mean"), (2, "max"), (1, "max")):
        expected = predict_maps(image, runner, Plan(scales, cfg.stride, flips=flips), cfg.with_overrides(fusion=fusion))
        np.testing.assert_array_equal(views.fused(flips, fusion)[0], expected[0])
        np.testing.assert_array_equal(views.fused(flips, fusion)[1], expected[1])


def test_collect_scores_skips_unreadable_and_mismatched_pairs(tmp_path: Path, weights: Path) -> None:
    data = labelled_folder(tmp_path / "data", count=3)
    (data / "images" / "cell_00002.png").write_bytes(b"not a png")
    tifffile.imwrite(data / "labels" / "cell_00003_label.tiff", np.zeros((10, 10), np.uint16))
    iio.imwrite(data / "images" / "cell_00004.png", disc_image(SHAPE, CENTRES, RADIUS))  # no label file
    pairs, unlabelled = labelled_pairs(data / "images", data / "labels")
    assert [image.name for image, _ in pairs] == ["cell_00001.png", "cell_00002.png", "cell_00003.png"]
    assert [image.name for image in unlabelled] == ["cell_00004.png"]
    errors: list[str] = []
    candidates = candidate_settings(InferenceConfig(), TuneGrid(flips=(1, 2), cell_thresholds=(0.2,),
                                                                 seed_thresholds=(0.5,), min_seed_areas=(4,)))
    scored = collect_scores(pairs, ModelRunner(weights / "mt2.fp32.onnx", "cpu", 1), InferenceConfig(), candidates,
                            errors.append)
    assert [s.name for s in scored] == ["cell_00001"]
    assert scored[0].f1.shape == (len(candidates),) and ((scored[0].f1 >= 0) & (scored[0].f1 <= 1)).all()
    assert len(errors) == 2 and errors[0].startswith("cell_00002.png: ") and "label shape (10, 10)" in errors[1]


def test_manifest_postprocess_round_trip(weights: Path) -> None:
    assert postprocess_settings(weights) == {}
    assert postprocess_settings(weights.parent / "elsewhere" / "model.onnx") == {}
    tuned = {"flips": 4, "fusion": "mean", "cell_threshold": 0.2, "seed_threshold": 0.9, "min_seed_area": 8,
             "seed_split_height": 0.15, "min_area_ratio": 0.2}
    store_postprocess(weights, tuned, "3 images")
    assert postprocess_settings(weights / "mt2.fp32.onnx") == tuned
    manifest = json.loads((weights / "manifest.json").read_text())
    assert manifest["note"] == "test weights" and manifest["postprocess"]["tuned_on"] == "3 images"
    assert verify_model(weights / "mt2.fp32.onnx") is not None  # file entries survive the rewrite
    with pytest.raises(ValueError, match="not post-processing fields"):
        store_postprocess(weights, {"window": 256}, "x")


@pytest.mark.parametrize(
    "table, message",
    [
        ([0.2], "must be a table"),
        ({"min_seed_area": "8"}, "must be a number"),
        ({"min_seed_area": 8.5}, "must be a whole number"),
        ({"window": 256}, "unknown field"),
        ({"fusion": 1}, "must be text"),
        ({"fusion": "median"}, "fusion must be one of max, mean"),
        ({"flips": 3}, "flips must be one of 1, 2, 4"),
        ({"min_area_ratio": 1.5}, "min_area_ratio in"),
        ({"seed_split_height": -0.1}, "seed_split_height"),
    ],
)
def test_damaged_postprocess_table_is_a_model_error(weights: Path, table, message: str) -> None:
    path = weights / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["postprocess"] = table
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=message):
        postprocess_settings(weights)


def test_tune_writes_the_manifest_and_predict_uses_it(tmp_path: Path, weights: Path) -> None:
    data = labelled_folder(tmp_path / "data")
    out = tmp_path / "out"
    predict = ["predict", "--input", str(data / "images"), "--output", str(out), "--model", str(weights),
               "--device", "cpu", "--threads", "1", "--mode", "accurate"]
    result = CliRunner().invoke(cli, predict)
    assert result.exit_code == 0, result.output
    assert not tifffile.imread(out / "cell_00001_label.tiff").any()  # MT2's S_min drops every small cell

    result = CliRunner().invoke(cli, ["tune", "--data", str(data), "--model", str(weights), "--device", "cpu",
                                      "--threads", "1", "--write"])
    assert result.exit_code == 0, result.output
    assert "(MT2's defaults)" in result.output and "stored in" in result.output
    tuned = postprocess_settings(weights)
    assert tuned["min_seed_area"] < np.pi * RADIUS**2
    assert tuned["target_diameter"] == InferenceConfig().target_diameter  # recorded with what it was tuned at

    result = CliRunner().invoke(cli, predict)
    assert result.exit_code == 0, result.output
    assert f"S_min {tuned['min_seed_area']} seed split {tuned['seed_split_height']:g} S_rel " \
        f"{tuned['min_area_ratio']:g}" in result.stdout
    assert len(np.unique(tifffile.imread(out / "cell_00001_label.tiff"))) - 1 == len(CENTRES)
    result = CliRunner().invoke(cli, [*predict, "--min-seed-area", "64"])  # the command line still wins
    assert result.exit_code == 0 and not tifffile.imread(out / "cell_00001_label.tiff").any()

    result = CliRunner().invoke(cli, ["tune", "--data", str(data), "--model", str(weights), "--device", "cpu",
                                      "--threads", "1", "--write", "--target-diameter", "12",
                                      "--fluorescence-target-diameter", "14"])
    assert result.exit_code == 0 and "target diameter 12 px (fluorescence 14 px)" in result.output
    stored = postprocess_settings(weights)
    assert (stored["target_diameter"], stored["fluorescence_target_diameter"]) == (12.0, 14.0)
    result = CliRunner().invoke(cli, ["tune", "--data", str(data), "--model", str(weights), "--device", "cpu",
                                      "--threads", "1", "--write"])  # no target given: the manifest's stay
    assert result.exit_code == 0 and "target diameter 12 px (fluorescence 14 px)" in result.output
    stored = postprocess_settings(weights)
    assert (stored["target_diameter"], stored["fluorescence_target_diameter"]) == (12.0, 14.0)
    result = CliRunner().invoke(cli, [*predict, "--report", str(tmp_path / "r.csv")])
    assert result.exit_code == 0, result.output
    row = (tmp_path / "r.csv").read_text().splitlines()[1].split(",")
    header = (tmp_path / "r.csv").read_text().splitlines()[0].split(",")
    diameter, scales = float(row[header.index("diameter")]), row[header.index("scales")].split("/")
    target = 14.0 if row[header.index("fluorescence")] == "True" else 12.0
    assert float(scales[1]) == pytest.approx(target / diameter, rel=0.01)  # predict takes the manifest's target


def test_tune_reports_what_predict_gives_with_the_stored_settings(tmp_path: Path, weights: Path) -> None:
    """The grid scores every setting at scales estimated with the manifest's old thresholds (MT2's S_min sees no
    disc); predict estimates with the stored ones. The figure tune stores is predict's own."""
    data = labelled_folder(tmp_path / "data", count=3)
    result = CliRunner().invoke(cli, ["tune", "--data", str(data), "--model", str(weights), "--device", "cpu",
                                      "--threads", "1", "--write", "--grid", "flips=1,2"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("as stored"))
    confirmed = float(re.search(r"mean F1 (\d\.\d+)", line).group(1))
    assert int(re.search(r"\((\d+) of them planned at other scales", line).group(1)) > 0
    assert f"mean F1 {confirmed:.4f}" in json.loads((weights / "manifest.json").read_text())["postprocess"]["tuned_on"]

    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["predict", "--input", str(data / "images"), "--output", str(out), "--model",
                                      str(weights), "--device", "cpu", "--threads", "1", "--mode", "accurate"])
    assert result.exit_code == 0, result.output
    f1 = [image_scores(tifffile.imread(label), tifffile.imread(out / label.name)).f1
          for label in sorted((data / "labels").iterdir())]
    assert round(float(np.mean(f1)), 4) == confirmed


def test_confirmation_keeps_grid_scores_only_where_the_scales_stayed(tmp_path: Path, weights: Path) -> None:
    data = labelled_folder(tmp_path / "data", count=2)
    pairs = labelled_pairs(data / "images", data / "labels")[0]
    runner = ModelRunner(weights / "mt2.fp32.onnx", "cpu", 1)
    cfg = InferenceConfig(min_seed_area=4)
    setting = {**{name: getattr(cfg, name) for name in POSTPROCESS_FIELDS}, "flips": 1}
    stayed = planned_scales(read_normalized(pairs[0][0], cfg.max_pixels, cfg), runner, cfg)
    sentinel = 0.123  # no image of discs scores this: a grid score kept, never recomputed
    scored = [Scored("cell_00001", np.array([0.0, sentinel]), "grey", stayed),
              Scored("cell_00002", np.array([0.0, sentinel]), "grey", (9.0,))]
    confirmed = confirm_scores(pairs, runner, cfg, scored, [{}, setting], lambda kind: setting)
    assert confirmed.moved == 1 and confirmed.f1[0] == sentinel
    image = read_normalized(pairs[1][0], cfg.max_pixels, cfg)
    plan = Plan(planned_scales(image, runner, cfg), cfg.stride, flips=1)
    expected = instance_map(*predict_maps(image, runner, plan, cfg), cfg, plan.view_scale)
    assert confirmed.f1[1] == image_scores(tifffile.imread(pairs[1][1]), expected).f1 > 0.5


def test_tune_keeps_the_stored_settings_when_the_best_as_stored_is_worse(
    tmp_path: Path, weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were the grid's best to lose once its own thresholds move the scales, the settings in use stay."""
    import app.tune

    data = labelled_folder(tmp_path / "data")
    stored = {"flips": 1, "fusion": "max", "cell_threshold": 0.3, "seed_threshold": 0.5, "min_seed_area": 4,
              "seed_split_height": 0.0, "min_area_ratio": 0.0}
    store_postprocess(weights, stored, "by hand")
    real = app.tune.confirm_scores

    def worse(*args, **kwargs):
        found = real(*args, **kwargs)
        return app.tune.Confirmation(found.f1 - 0.5, found.moved)

    monkeypatch.setattr(app.tune, "confirm_scores", worse)
    result = CliRunner().invoke(cli, ["tune", "--data", str(data), "--model", str(weights), "--device", "cpu",
                                      "--threads", "1", "--write", "--grid", "flips=2", "--grid", "fusions=mean"])
    assert result.exit_code == 0, result.output
    assert "the settings in use before (the manifest's, else MT2's) give 1.0000 on these images: they stay" \
        in result.output
    kept = postprocess_settings(weights)
    assert {name: kept[name] for name in POSTPROCESS_FIELDS} == stored
    assert "mean F1 1.0000" in json.loads((weights / "manifest.json").read_text())["postprocess"]["tuned_on"]

    monkeypatch.setattr(app.tune, "confirm_scores", real)
    result = CliRunner().invoke(cli, ["tune", "--data", str(data), "--model", str(weights), "--device", "cpu",
                                      "--threads", "1", "--write", "--grid", "flips=2", "--grid", "fusions=mean"])
    assert result.exit_code == 0 and "they stay" not in result.output
    assert postprocess_settings(weights)["flips"] == 2  # the best as stored is no worse: it is written


def _scored(kind: str, common: list[float], other: list[float]) -> list[Scored]:
    return [Scored(f"{kind}{i}", np.array([c, o]), kind) for i, (c, o) in enumerate(zip(common, other))]


def test_a_kind_of_image_keeps_its_own_thresholds_only_beyond_noise() -> None:
    base = {"flips": 1, "fusion": "mean", "cell_threshold": 0.1, "seed_threshold": 0.5, "min_seed_area": 16,
            "seed_split_height": 0.15, "min_area_ratio": 0.2}
    candidates = [base, {**base, "cell_threshold": 0.3}]
    rng = np.random.default_rng(0)
    common = list(rng.uniform(0.6, 0.8, 12))
    scored = (
        _scored("stained", common, [c + 0.05 for c in common])  # the other setting wins on every image
        + _scored("fluorescence", common, [c + (0.08 if i % 2 else -0.08) for i, c in enumerate(common)])  # noise
        + _scored("grey", common[:4], [c + 0.2 for c in common[:4]])  # too few images to judge
    )
    choices = {c.kind: c for c in class_choices(candidates, scored, base, TuneGrid())}
    assert set(choices) == {"stained", "fluorescence"}
    stained, fluorescence = choices["stained"], choices["fluorescence"]
    assert stained.kept and stained.settings["cell_threshold"] == 0.3
    assert stained.held_out_gain == pytest.approx(0.05) and stained.own_f1 > stained.common_f1
    assert not fluorescence.kept  # half the images gain, half lose: the held-out gain is not beyond its noise
    assert "cell_threshold" in stained.settings and "flips" not in stained.settings


def test_class_thresholds_round_trip_and_apply_to_their_kind_only(tmp_path: Path, weights: Path) -> None:
    tuned = {"flips": 1, "fusion": "mean", "cell_threshold": 0.2, "seed_threshold": 0.5, "min_seed_area": 8,
             "seed_split_height": 0.0, "min_area_ratio": 0.0}
    store_postprocess(weights, tuned, "test", {"fluorescence": {"min_seed_area": 4000}})
    assert class_settings(weights) == {"fluorescence": {"min_seed_area": 4000}}
    assert postprocess_settings(weights) == tuned
    data = labelled_folder(tmp_path / "data", count=1)  # bright discs on black: fluorescence
    out = tmp_path / "out"
    predict = ["predict", "--input", str(data / "images"), "--output", str(out), "--model", str(weights),
               "--device", "cpu", "--threads", "1", "--mode", "accurate", "--report", str(tmp_path / "r.csv")]
    result = CliRunner().invoke(cli, predict)
    assert result.exit_code == 0, result.output
    assert "fluorescence images min_seed_area 4000" in result.stdout
    assert not tifffile.imread(out / "cell_00001_label.tiff").any()  # the kind's own S_min drops every disc
    assert ",fluorescence," in (tmp_path / "r.csv").read_text()
    result = CliRunner().invoke(cli, [*predict, "--min-seed-area", "8"])  # the command line still wins
    assert result.exit_code == 0 and tifffile.imread(out / "cell_00001_label.tiff").any()
    store_postprocess(weights, tuned, "test", {"stained": {"min_seed_area": 4000}})
    result = CliRunner().invoke(cli, predict)
    assert result.exit_code == 0 and tifffile.imread(out / "cell_00001_label.tiff").any()  # another kind's
    with pytest.raises(ValueError, match="not post-processing fields"):
        store_postprocess(weights, tuned, "test", {"stained": {"flips": 2}})


@pytest.mark.parametrize(
    "classes, message",
    [
        ([1], "must be a table"),
        ({"tissue": {}}, "not a table of a known kind"),
        ({"grey": {"fusion": "max"}}, "cannot set fusion"),
        ({"grey": {"min_area_ratio": 2.0}}, "min_area_ratio"),
    ],
)
def test_damaged_class_table_is_a_model_error(weights: Path, classes, message: str) -> None:
    path = weights / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["postprocess"] = {"classes": classes}
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=message):
        class_settings(weights)


def test_tune_without_labelled_images_or_manifest_fails_clearly(tmp_path: Path) -> None:
    model = contract_model(tmp_path / "bare" / "model.onnx")
    data = labelled_folder(tmp_path / "data")
    result = CliRunner().invoke(cli, ["tune", "--data", str(tmp_path / "bare"), "--model", str(model)])
    assert result.exit_code != 0 and "has no images/ folder" in result.output
    (tmp_path / "bare" / "images").mkdir()
    (tmp_path / "bare" / "labels").mkdir()
    result = CliRunner().invoke(cli, ["tune", "--data", str(tmp_path / "bare"), "--model", str(model)])
    assert result.exit_code != 0 and "has a label file" in result.output
    result = CliRunner().invoke(cli, ["tune", "--data", str(data), "--model", str(model), "--device", "cpu", "--write"])
    assert result.exit_code != 0 and "no manifest.json" in result.output


def test_grid_axes_can_be_replaced_from_the_command_line() -> None:
    from app.tune import parse_grid

    grid = parse_grid(["flips=4", "cell_thresholds=0.1,0.2", "class_min_images=10"])
    assert grid.flips == (4,) and grid.cell_thresholds == (0.1, 0.2) and grid.class_min_images == 10
    assert grid.fusions == TuneGrid().fusions
    with pytest.raises(ValueError, match="FIELD one of"):
        parse_grid(["no_such_axis=1"])
    with pytest.raises(ValueError, match="min_seed_areas=a"):
        parse_grid(["min_seed_areas=a"])
