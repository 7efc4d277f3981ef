"""The tiles of a streamed slide as a Dask graph: one task per tile to segment (`app.slides.tiles.segment_tile`),
run by Dask's threaded scheduler in this process (`cfg.slide_threads` at once, the default), by a local cluster
of `cfg.workers` worker processes it starts, or by a running `dask.distributed` scheduler at `cfg.scheduler`.

Tasks are independent: each reads its own crop from the file and stores its own result, and only a small
`TileResult` comes back, so the caller's memory does not grow with the slide. `on_done` runs in the caller's
thread as each task finishes, in whatever order, so the caller records progress as it goes; a failed task
raises its error there and the tasks not yet started are dropped (on threads, once those running have ended; on
a cluster, a task already running may still store its tile).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from app.config import InferenceConfig
from app.slides.tiles import TileJob, TileResult, segment_tile

THREADS = "threads"
CONNECT_TIMEOUT = "20s"


def task_key(index: int) -> str:
    return f"mt2-tile-{index}"


def tile_graph(jobs: Sequence[TileJob]) -> dict[str, tuple[Callable[[TileJob], TileResult], TileJob]]:
    """The Dask graph: one task per tile, no dependencies between them."""
    return {task_key(job.index): (segment_tile, job) for job in jobs}


def distributed(cfg: InferenceConfig) -> bool:
    """Whether tiles run on a dask.distributed cluster (a local one or a running scheduler) rather than threads."""
    return cfg.workers > 0 or cfg.scheduler != THREADS


def worker_threads(cfg: InferenceConfig) -> int:
    """ONNX Runtime threads of each worker process: `cfg.threads`, else the cores shared out between the local
    workers (0, ONNX Runtime's own choice, on a remote cluster)."""
    if cfg.threads or not cfg.workers:
        return cfg.threads
    return max(1, (os.cpu_count() or 1) // cfg.workers)


@contextmanager
def cluster(cfg: InferenceConfig) -> Iterator[Any]:
    """A `dask.distributed.Client`: of a local cluster of `cfg.workers` processes (one thread each), or of the
    scheduler at `cfg.scheduler`; None for the threaded scheduler. Closed (the local cluster stopped) on exit."""
    if not distributed(cfg):
        yield None
        return
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)
    if cfg.workers > 0:
        with LocalCluster(n_workers=cfg.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=logging.WARNING) as local, Client(local) as client:
            yield client
        return
    try:
        client = Client(cfg.scheduler, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as exc:
        raise RuntimeError(f"cannot reach the Dask scheduler at {cfg.scheduler} ({exc})") from exc
    with client:
        yield client


def run_graph(jobs: Sequence[TileJob], cfg: InferenceConfig, on_done: Callable[[TileResult], None],
              client: Any = None) -> None:
    """Run every job; `on_done(result)` in this thread as each finishes. `client`: from `cluster`, None for
    threads."""
    if not jobs:
        return
    graph = tile_graph(jobs)
    keys = list(graph)
    if client is None:
        from dask.callbacks import Callback
        from dask.threaded import get

        def posttask(key: str, result: TileResult, dsk: Any, state: Any, worker: Any) -> None:
            on_done(result)

        # Our own pool, so that a failure returns only once the tasks still running have ended (none of them
        # stores a tile after the caller has cleaned up).
        pool = ThreadPoolExecutor(cfg.slide_threads, thread_name_prefix="mt2-tile")
        try:
            with Callback(posttask=posttask):
                get(graph, keys, num_workers=cfg.slide_threads, pool=pool)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return
    from distributed import as_completed

    futures = client.get(graph, keys, sync=False)
    try:
        for future in as_completed(futures):
            on_done(future.result())
    finally:
        client.cancel(futures)


__all__ = ["THREADS", "cluster", "distributed", "run_graph", "task_key", "tile_graph", "worker_threads"]
