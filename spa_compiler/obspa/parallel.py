"""OBSPA's work spread over the cores as independent one-thread tasks, not one multithreaded call at a time.

On a ResNet-50 at 224x224 OBSPA is about 114 CPU-s of work with BLAS and onnxruntime on one thread, and it
took 85 s on two idle cores with both libraries multithreaded (1.34x of two cores): most of its matrices
are too small or too thin (rank-36 downdates, 1024-row Gram products) for two BLAS threads to share well,
and their threads spin between calls.  The work comes in independent pieces instead: each consumer layer's
second moments of a statistics batch (while onnxruntime, on one thread, runs the next batch), each group's
greedy, each consumer's compensation.  Here those pieces run on one thread per core with BLAS on one thread
(:func:`blas.pinned`); numpy's BLAS, LAPACK and array loops release the GIL, so they run side by side.

Results do not depend on the number of threads: every task computes what it computed in the serial loop
(draws from a shared random generator stay in the caller, in the serial order), and the caller merges the
results in the serial order.  ``SPAC_THREADS=1`` runs everything in the caller's thread.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Callable, Iterable, Optional, Sequence, TypeVar

from .blas import pinned

T = TypeVar("T")
R = TypeVar("R")

_inside = threading.local()  # set in a pool's worker: a nested map runs serially there


def workers() -> int:
    """Threads for OBSPA's parallel work: ``SPAC_THREADS`` when set, else the cores this process may use."""
    configured = os.environ.get("SPAC_THREADS", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def parallel() -> bool:
    """Whether maps run on more than one thread here (not inside a worker, and more than one core)."""
    return workers() > 1 and not getattr(_inside, "worker", False)


def pool_map(fn: Callable[[T], R], items: Sequence[T], cost: Optional[Callable[[T], float]] = None,
             done: Optional[Callable[[int, R], None]] = None) -> list[R]:
    """``[fn(item) for item in items]`` on :func:`workers` threads with BLAS on one thread each.

    *cost* orders the submissions, largest first (fewer idle cores at the end); *done(index, result)* is
    called in the caller's thread as each task finishes.  The first exception raised by a task is raised
    here once the running tasks have finished.
    """
    items = list(items)
    if not parallel() or len(items) < 2:
        results = []
        for index, item in enumerate(items):
            results.append(fn(item))
            if done is not None:
                done(index, results[-1])
        return results
    order = sorted(range(len(items)), key=lambda i: -cost(items[i])) if cost is not None else range(len(items))
    results: list = [None] * len(items)

    def task(index: int):
        _inside.worker = True
        try:
            return fn(items[index])
        finally:
            _inside.worker = False

    with pinned(), ThreadPoolExecutor(min(workers(), len(items))) as pool:
        futures = {pool.submit(task, index): index for index in order}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                if future.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise future.exception()
                results[futures[future]] = future.result()
                if done is not None:
                    done(futures[future], results[futures[future]])
    return results


def prefetched(run: Callable[[T], R], items: Iterable[T]) -> Iterable[tuple[T, R]]:
    """``(item, run(item))`` for each of *items*, ``run`` of the next item working in a background thread
    while the caller handles the current one (onnxruntime's next statistics batch while the second moments
    of this one are summed).  Serial when :func:`parallel` is false."""
    if not parallel():
        for item in items:
            yield item, run(item)
        return
    with ThreadPoolExecutor(1) as runner:
        current = None
        for item in items:
            future = runner.submit(run, item)
            if current is not None:
                yield current[0], current[1].result()
            current = (item, future)
        if current is not None:
            yield current[0], current[1].result()

