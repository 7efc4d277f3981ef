"""The README's sentence on the shipped manifest must name the settings the shipped manifest holds: every
landed model is re-tuned, and a stale figure there misleads the first reader."""

from __future__ import annotations

import re
from pathlib import Path

from app.manifest import postprocess_settings

ROOT = Path(__file__).resolve().parents[1]

# README wording → manifest post-processing key
NAMES = {
    "T_cell": "cell_threshold",
    "T_seed": "seed_threshold",
    "S_min": "min_seed_area",
    "seed split": "seed_split_height",
    "S_rel": "min_area_ratio",
}


def shipped_sentence() -> str:
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    found = re.search(r"The shipped manifest sets (.+?)\(\[docs/APP\.md\]", text)
    assert found, "README no longer has the sentence 'The shipped manifest sets ...'"
    return found.group(1)


def test_readme_names_the_shipped_postprocessing() -> None:
    sentence = shipped_sentence()
    post = postprocess_settings(ROOT / "weights")
    for word, key in NAMES.items():
        value = re.search(rf"{word} ([0-9.]+)", sentence)
        assert value, f"README's shipped-manifest sentence does not give {word}"
        assert float(value.group(1)) == float(post[key]), f"README {word} {value.group(1)}, manifest {post[key]}"
    assert re.search(rf"\b{post['flips']} views", sentence)
    assert f"{post['fusion']} fusion" in sentence
    diameters = re.search(r"target diameters of ([0-9.]+) px \(([0-9.]+) px for fluorescence\)", sentence)
    assert diameters, "README's shipped-manifest sentence does not give the target diameters"
    assert float(diameters.group(1)) == post["target_diameter"]
    assert float(diameters.group(2)) == post["fluorescence_target_diameter"]
