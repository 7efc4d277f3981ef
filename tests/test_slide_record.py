"""The progress record: what a resumed run may trust, written atomically, cleared once the labels are written."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from app.config import InferenceConfig
from app.infer import Plan
from app.slides.record import (
    Progress,
    SlideAnalysis,
    clear,
    fingerprint,
    load_part,
    load_progress,
    record_paths,
    save_part,
    save_progress,
)

ANALYSIS = SlideAnalysis(sources=(0, 0, 0), ranges=((3.0, 250.5), None, (0.0, 1.0)), kind="grey", diameter=21.5,
                         size_source="estimated", plan=Plan((0.8, 1.0), 256, "adaptive plan", 2), tissue=(2, 5, 9),
                         tissue_share=0.031, tiles=12)


def test_the_fingerprint_follows_input_model_and_settings_not_where_tiles_run(tmp_path: Path) -> None:
    source, model = tmp_path / "s.tif", tmp_path / "m.onnx"
    source.write_bytes(b"pixels")
    model.write_bytes(b"weights")
    cfg = InferenceConfig()
    base = fingerprint(source, model, "cpu", cfg)
    assert fingerprint(source, model, "cpu", cfg.with_overrides(workers=2, slide_threads=4, threads=1)) == base
    assert fingerprint(source, model, "cpu", cfg.with_overrides(slide_tile_size=512)) != base
    assert fingerprint(source, model, "cpu", cfg, {"grey": {"cell_threshold": 0.2}}) != base
    assert fingerprint(source, model, "cuda", cfg) != base
    model.write_bytes(b"other weights")
    assert fingerprint(source, model, "cpu", cfg) != base
    model.write_bytes(b"weights")
    os.utime(source, ns=(1, 1))  # the same name, touched: another input
    assert fingerprint(source, model, "cpu", cfg) != base


def test_record_round_trip_and_mismatch(tmp_path: Path) -> None:
    record, parts = record_paths(tmp_path / "s_label.tiff")
    assert (record.name, parts.name) == (".s_label.tiff.progress.json", ".s_label.tiff.parts")
    save_progress(record, Progress("abc", ANALYSIS, {2: 7, 5: 0}))
    loaded = load_progress(record, "abc")
    assert loaded is not None and loaded.analysis == ANALYSIS and loaded.done == {2: 7, 5: 0}
    assert load_progress(record, "other") is None
    record.write_text("{truncated")
    assert load_progress(record, "abc") is None
    assert load_progress(tmp_path / "missing.json", "abc") is None


def test_parts_round_trip_and_clear(tmp_path: Path) -> None:
    output = tmp_path / "s_label.tiff"
    record, parts = record_paths(output)
    labels = np.arange(12, dtype=np.uint16).reshape(3, 4)
    save_part(parts, 7, (100, 200), labels)
    (top_left, back) = load_part(parts, 7)
    assert top_left == (100, 200) and np.array_equal(back, labels) and back.dtype == np.uint16
    save_progress(record, Progress("abc", ANALYSIS))
    (tmp_path / ".s_label.tiff.3f2a.tmp").write_bytes(b"half a file from a killed run")
    (tmp_path / "other_label.tiff").write_bytes(b"kept")
    clear(output)
    assert [p.name for p in tmp_path.iterdir()] == ["other_label.tiff"]
