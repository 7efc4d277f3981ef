"""The peers' half of `python -m benchmarks.peers`: Cellpose 3 and StarDist 2D timed on the CPU, untrained.

    build/peers-venv/bin/python benchmarks/peers_side.py --repeats 3 --threads 2 --out OUT.json SIZE.npz ...

Runs only in the peers' own interpreter (`make peers-env`), started by benchmarks/peers.py, which also sets the
OMP/MKL/numba thread variables before this process starts. It imports numpy and the peers' packages, never the
project's: the two environments share nothing but the files. Each SIZE.npz holds one image size's grey uint8
image (`grey`) and its known instance labels (`labels`); OUT.json gets the package versions and one row per peer
and size (`benchmarks.peers.Row`'s fields).

No pretrained weights can be downloaded, so each peer's default architecture is built with random weights: the
network times are what a trained model costs (the arithmetic does not depend on the weights), the masks are not
compared. Post-processing runs on the maps a perfect network would give for the known labels, so its load is
that of a real image of cells.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

CELLPOSE = "Cellpose 3 (cyto3 CPnet)"
STARDIST = "StarDist 2D (default Config2D)"
DISTRIBUTIONS = ("cellpose", "stardist", "csbdeep", "tensorflow-cpu", "keras", "torch", "numpy")
CELLPOSE_CHANNELS = [0, 0]  # grey image, no nuclear channel
CELLPOSE_FLOW_SCALE = 5.0  # cellpose trains its flow outputs on 5 x the unit flows of the labels
CELLPOSE_LOGIT = 6.0  # cell probability logit of a confident network inside (+) and outside (-) cells
CELLPOSE_NITER = 200  # what CellposeModel.eval uses at its own diameter (rescale 1)
NORM_PERCENTILES = (1.0, 99.8)  # StarDist's usual csbdeep.utils.normalize before predict


def median_seconds(run: Callable[[], Any], repeats: int) -> float:
    """Median wall seconds of `repeats` calls after one untimed warm-up (graph building, MKL-DNN plans)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def set_threads(threads: int) -> None:
    """The torch and TensorFlow thread pools to `threads` intra-op threads and one inter-op thread (ONNX Runtime's
    default on our side), before either runs anything."""
    import tensorflow as tf  # type: ignore[import-untyped, unused-ignore]
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def row(method: str, labels: np.ndarray, network_s: float, post_s: float, params: int, note: str) -> dict:
    """One result row as benchmarks.peers.Row reads it."""
    height, width = labels.shape
    return {"method": method, "height": int(height), "width": int(width), "network_s": network_s,
            "post_s": post_s, "params": int(params), "note": note}


def found(masks: np.ndarray, labels: np.ndarray) -> str:
    """'found N of M cells': the post-processing's count against the known labels (a sanity check)."""
    return f"found {len(np.unique(masks)) - 1} of {len(np.unique(labels)) - 1} cells"


# --- Cellpose 3 ---------------------------------------------------------------------------------------------------


def cellpose_maps(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flows 2×H×W, cell probability logits H×W) that a perfect cyto3 would output for `labels`."""
    import torch
    from cellpose import dynamics  # type: ignore[import-not-found, unused-ignore]

    flows = dynamics.labels_to_flows([labels.astype(np.int32)], device=torch.device("cpu"))
    flow = flows[0]  # labels, foreground, dY, dX
    d_p = (CELLPOSE_FLOW_SCALE * flow[2:4]).astype(np.float32)
    cellprob = np.where(labels > 0, CELLPOSE_LOGIT, -CELLPOSE_LOGIT).astype(np.float32)
    return d_p, cellprob


def cellpose_rows(inputs: list[dict[str, np.ndarray]], repeats: int) -> list[dict]:
    """Cellpose's network (`CellposeModel.eval` without masks: its normalisation and 224-px tiles at overlap 0.1,
    batches of 8) and its mask recovery (`dynamics.resize_and_compute_masks`: flow dynamics, masks, flow-error
    check) per size."""
    import torch
    from cellpose import dynamics, models  # type: ignore[import-not-found, unused-ignore]

    model = models.CellposeModel(gpu=False, pretrained_model=False)  # cyto3's CPnet, nbase [2, 32, 64, 128, 256]
    params = sum(p.numel() for p in model.net.parameters())
    cpu = torch.device("cpu")
    rows = []
    for data in inputs:
        grey, labels = data["grey"], data["labels"]
        network = median_seconds(lambda: model.eval(grey, channels=CELLPOSE_CHANNELS, compute_masks=False), repeats)
        d_p, cellprob = cellpose_maps(labels)
        masks: list[np.ndarray] = []

        def post() -> None:
            masks[:] = [dynamics.resize_and_compute_masks(d_p, cellprob, niter=CELLPOSE_NITER, device=cpu)]

        post_s = median_seconds(post, repeats)
        note = f"224-px tiles, mkldnn {model.mkldnn}; {found(masks[0], labels)}"
        rows.append(row(CELLPOSE, labels, network, post_s, params, note))
    return rows


# --- StarDist 2D --------------------------------------------------------------------------------------------------


def stardist_maps(labels: np.ndarray, n_rays: int, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(object probability H×W, ray distances H×W×n_rays) that a perfect StarDist would output for `labels`."""
    from stardist.geometry import star_dist  # type: ignore[import-not-found, unused-ignore]
    from stardist.utils import edt_prob  # type: ignore[import-not-found, unused-ignore]

    prob = edt_prob(labels)[:: grid[0], :: grid[1]].astype(np.float32)
    dist = star_dist(labels, n_rays=n_rays, grid=grid).astype(np.float32)
    return prob, dist


def stardist_rows(inputs: list[dict[str, np.ndarray]], repeats: int) -> list[dict]:
    """StarDist's network (`StarDist2D.predict` at its default n_tiles) and its NMS (`non_maximum_suppression` at the
    model's thresholds, then `polygons_to_label`, as `predict_instances` does on dense maps) per size."""
    from csbdeep.utils import normalize  # type: ignore[import-not-found, unused-ignore]
    from stardist.geometry import polygons_to_label  # type: ignore[import-not-found, unused-ignore]
    from stardist.models import Config2D, StarDist2D  # type: ignore[import-not-found, unused-ignore]
    from stardist.nms import non_maximum_suppression  # type: ignore[import-not-found, unused-ignore]

    model = StarDist2D(Config2D(), name="untrained", basedir=None)  # n_rays 32, grid (1, 1), U-Net depth 3
    cfg, thresholds = model.config, model.thresholds
    grid = tuple(cfg.grid)
    rows = []
    for data in inputs:
        labels = data["labels"]
        image = normalize(data["grey"], *NORM_PERCENTILES).astype(np.float32)
        network = median_seconds(lambda: model.predict(image, show_tile_progress=False), repeats)
        prob, dist = stardist_maps(labels, cfg.n_rays, grid)
        masks: list[np.ndarray] = []

        def post() -> None:
            points, probs, dists = non_maximum_suppression(dist, prob, grid=grid, prob_thresh=thresholds.prob,
                                                           nms_thresh=thresholds.nms)
            masks[:] = [polygons_to_label(dists, points, labels.shape, prob=probs)]

        post_s = median_seconds(post, repeats)
        note = f"n_tiles default (one pass); {found(masks[0], labels)}"
        rows.append(row(STARDIST, labels, network, post_s, model.keras_model.count_params(), note))
    return rows


# --- command line -------------------------------------------------------------------------------------------------


def versions(distributions: tuple[str, ...] = DISTRIBUTIONS) -> dict[str, str]:
    """Python's and the installed distributions' versions in this environment (shared with our side)."""
    found_versions = {"python": platform.python_version()}
    for name in distributions:
        try:
            found_versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found_versions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", type=Path, nargs="+", help="one .npz per size (grey, labels)")
    parser.add_argument("--repeats", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the versions and rows")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    inputs = [dict(np.load(path)) for path in args.inputs]
    rows = cellpose_rows(inputs, args.repeats) + stardist_rows(inputs, args.repeats)
    args.out.write_text(json.dumps({"versions": versions(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
