"""Several data sources in one run: folders, sampling weights, unlabelled folders, bad files named early."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.config import InferenceConfig
from app.diameter import label_diameter
from app.metric import read_labels
from tests.log_capture import logged
from tests.training_data import tiny_config, write_dataset
from training.config import ConfigError, DataConfig, load_config
from training.data import EpochSampler, epoch_order, prepare_all, sampling_probabilities, split_sources
from training.trainer import data_folders, train


def test_weights_share_each_source_among_its_images() -> None:
    probs = sampling_probabilities([0, 0, 0, 1], (0.5, 0.5))
    assert probs.tolist() == pytest.approx([1 / 6, 1 / 6, 1 / 6, 1 / 2])
    assert sampling_probabilities([0, 1], ()) is None
    assert sampling_probabilities([0, 0, 2], (1.0, 3.0)).tolist() == pytest.approx([0.25, 0.25, 0.5])  # 2: weight 1
    with pytest.raises(ValueError, match="weight 0"):
        sampling_probabilities([1, 1], (1.0, 0.0))


def test_weighted_draws_follow_the_weights_and_repeat_for_a_resumed_run() -> None:
    sources = [0] * 90 + [1] * 10
    probs = sampling_probabilities(sources, (1.0, 1.0))
    order = epoch_order(100, 20_000, seed=1, stream=0, epoch=3, probs=probs)
    share = float(np.mean(order >= 90))
    assert share == pytest.approx(0.5, abs=0.02)  # 10 images of source 1 get half the draws
    assert np.array_equal(order, epoch_order(100, 20_000, seed=1, stream=0, epoch=3, probs=probs))
    sampler = EpochSampler(100, 4, 5, epoch=0, seed=2, stream=0, probs=probs)
    assert list(sampler) == list(EpochSampler(100, 4, 5, epoch=0, seed=2, stream=0, probs=probs))


def test_sources_are_tagged_and_a_bad_file_in_one_is_named_and_skipped(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "real", labelled=3, unlabelled=0, seed=1)
    b = write_dataset(tmp_path / "synth", labelled=4, unlabelled=2, seed=2)
    (a / "images" / "cell_bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (a / "labels" / "cell_bad_label.tiff").write_bytes(b"II*\x00 broken")
    (b / "images" / "orphan.png").write_bytes((b / "images" / "cell_000.png").read_bytes())
    extra = tmp_path / "more_unlabelled" / "deep"
    extra.mkdir(parents=True)
    (extra / "u.png").write_bytes((b / "unlabeled" / "u_000.png").read_bytes())
    cfg = DataConfig(val_fraction=0.0, unlabelled_dirs=(str(tmp_path / "more_unlabelled"),))
    split = split_sources([a, b], cfg)
    assert sorted({s.source for s in split.labelled}) == [0, 1]
    assert sum(s.source == 0 for s in split.labelled) == 4  # the broken pair is still listed here
    assert {s.source for s in split.unlabelled} == {1, 2}  # synth's unlabeled/ and the extra folder
    assert split.problems == ["synth/orphan.png: no label file orphan_label.tiff"]
    prepared, problems = prepare_all(split.labelled, tmp_path / "cache", cfg, load_config("cpu").targets,
                                     InferenceConfig())
    assert len(prepared) == 7 and [p.source for p in prepared].count(0) == 3
    assert len(problems) == 1 and problems[0].startswith("cell_bad")


def test_prepared_samples_know_their_object_diameter(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "a", labelled=2, unlabelled=1, seed=5)
    split = split_sources([folder], DataConfig(val_fraction=0.0))
    targets = load_config("cpu").targets
    prepared, _ = prepare_all(split.labelled, tmp_path / "cache", DataConfig(), targets, InferenceConfig())
    for sample, item in zip(split.labelled, prepared):
        assert item.diameter == pytest.approx(label_diameter(read_labels(sample.label)))
        assert item.diameter > 0
    again, _ = prepare_all(split.labelled, tmp_path / "cache", DataConfig(), targets, InferenceConfig())
    assert [p.diameter for p in again] == [p.diameter for p in prepared]  # from the cache
    unlabelled, _ = prepare_all(split.unlabelled, tmp_path / "cache", DataConfig(), targets, InferenceConfig())
    assert [p.diameter for p in unlabelled] == [None]


def test_a_run_reads_several_sources_with_weights(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a", labelled=3, unlabelled=0, seed=3)
    b = write_dataset(tmp_path / "b", labelled=3, unlabelled=1, seed=4)
    (a / "images" / "cell_bad.png").write_bytes(b"not an image")
    (a / "labels" / "cell_bad_label.tiff").write_bytes(b"not a tiff")
    cfg = tiny_config(**{"data.sources": [str(a), str(b)], "data.weights": [3.0, 1.0], "schedule.epochs": 1,
                         "data.labelled_as_unlabelled": True, "teacher.warmup_epochs": 0})
    with logged("training") as messages:
        best = train(cfg, None, tmp_path / "run")
    assert best.exists()
    assert any(m.startswith("cell_bad") for m in messages[:3])  # named while the data is prepared, before step 1
    assert any("source a: 2 labelled image(s), 75% of labelled draws" in m for m in messages)
    # unlabelled: b's own image plus the 4 labelled training images
    assert any(m.startswith("data: 4 labelled, 5 unlabelled") for m in messages)


def test_folders_and_weights_must_agree(tmp_path: Path) -> None:
    a = write_dataset(tmp_path / "a", labelled=2, unlabelled=0)
    with pytest.raises(ValueError, match="2 value"):
        data_folders(tiny_config(**{"data.weights": [1.0, 2.0]}), [a])
    with pytest.raises(FileNotFoundError, match="not found"):
        data_folders(tiny_config(), [tmp_path / "missing"])
    with pytest.raises(ValueError, match="no data folder"):
        data_folders(tiny_config(), [])
    with pytest.raises(ConfigError, match="data.weights"):
        tiny_config(**{"data.sources": [str(a)], "data.weights": [1.0, 1.0]})
    with pytest.raises(ConfigError, match="non-negative"):
        tiny_config(**{"data.weights": [-1.0]})
