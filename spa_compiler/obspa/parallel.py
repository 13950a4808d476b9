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
from typing import Callable, Iterable, Iterator, Optional, Sequence, TypeVar

from ..errors import UsageError
from .blas import pinned

T = TypeVar("T")
R = TypeVar("R")

_inside = threading.local()  # set in a pool's worker: a nested map runs serially there


def workers() -> int:
    """Threads for OBSPA's parallel work: ``SPAC_THREADS`` when set, else the cores this process may use."""
    configured = os.environ.get("SPAC_THREADS", "").strip()
    if configured:
        if not configured.isdigit() or int(configured) < 1:
            raise UsageError(f"SPAC_THREADS must be a positive whole number of threads, not {configured!r}")
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


def overlapped(run: Callable[[T], R], items: Iterable[T]) -> Iterator[tuple[T, R, Callable[[], None]]]:
    """``(item, run(item), start_next)`` for each of *items*; ``start_next()`` starts ``run`` of the next item
    in a background thread, to work while the caller finishes with this one (onnxruntime's next statistics
    batch while the second moments of this one are summed).  The caller starts it once it has let go of
    the big part of the result (a ResNet-50's exposed activations: 290 MB a batch), so that two results
    are never held at once; it starts when the caller asks for the next item otherwise.  Runs in the
    caller's thread when :func:`parallel` is false."""
    items = iter(items)
    if not parallel():
        for item in items:
            yield item, run(item), lambda: None
        return
    with ThreadPoolExecutor(1) as runner:
        item = next(items, _END)
        pending = [runner.submit(run, item)] if item is not _END else []
        while pending:
            following = next(items, _END)

            def start_next(following=following) -> None:
                if not pending and following is not _END:
                    pending.append(runner.submit(run, following))
            # the result goes to the caller only: no reference here once the caller drops it
            yield item, pending.pop(0).result(), start_next
            start_next()
            item = following


_END = object()
