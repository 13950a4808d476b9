"""One BLAS thread for OBSPA's many small matrices.

OBSPA factors, inverts and downdates one matrix per consumer layer, most of them a few hundred
rows wide (an unrolled BiLSTM tagger has ~200 consumers of 200 features).  A multithreaded
OpenBLAS spends more on waking and spinning its threads than on such a matrix: a 200 x 200
Cholesky took 0.1 CPU-s with two threads and 0.5 ms with one on a loaded 2-core machine, and
that was a third of OBSPA's time on those models.  Work on matrices below ``SMALL`` runs with
one thread (threadpoolctl, when installed); large ones keep the BLAS library's own setting.
Inside :func:`pinned` (work spread over the cores by :mod:`.parallel`, one task per core) every BLAS call
runs on one thread and the per-call choices below do nothing: a process-wide setting cannot be changed
per task while other tasks run.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from functools import lru_cache
from typing import Iterator

_pinned = 0  # depth of pinned() blocks: while positive, BLAS is on one thread for every caller

SMALL = 1024  # matrices narrower than this run single-threaded


@lru_cache(maxsize=1)
def _controller():
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional: without it the BLAS library keeps its own thread count
        return None
    return ThreadpoolController()


@contextmanager
def threads_for(size: int) -> Iterator[None]:
    """One BLAS thread inside the block when the matrices it works on are at most *size* wide and small."""
    with (one_thread() if size < SMALL else nullcontext()):
        yield


@contextmanager
def pinned() -> Iterator[None]:
    """One BLAS thread for everything inside the block, whichever thread calls it (the parallel tasks'
    own :func:`threads_for` and :func:`one_thread` then change nothing)."""
    global _pinned
    controller = _controller()
    with (controller.limit(limits=1, user_api="blas") if controller is not None and not _pinned else nullcontext()):
        _pinned += 1
        try:
            yield
        finally:
            _pinned -= 1


@contextmanager
def one_thread() -> Iterator[None]:
    """One BLAS thread inside the block, whatever the size: for LAPACK calls whose threaded versions
    synchronize so often that they cost more than one thread (a 2304-wide Cholesky: 3.3 CPU-s and 8 s
    on two threads of the loaded machine, 0.18 CPU-s and 0.5 s on one)."""
    controller = _controller()
    with (controller.limit(limits=1, user_api="blas") if controller is not None and not _pinned else nullcontext()):
        yield
