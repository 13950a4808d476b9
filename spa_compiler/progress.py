"""Progress on stderr: one-line messages, and a bar for the long loops (statistics batches, OBSPA groups).

The API takes any ``Callable[[str], None]`` as *progress*; long loops call
:func:`step`, which draws only when that callable is a :class:`Progress` with
its bar enabled, so library users and ``--json`` runs see nothing extra.  The
CLI turns the bar on when stderr is a terminal (``--progress/--no-progress``
overrides), because redrawn lines are junk in a log file.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO

BAR_WIDTH = 28
MIN_REDRAW_SECONDS = 0.1


class Progress:
    """Messages as ``[spac] ...`` lines; a redrawn ``label [####....] done/total`` bar when *bar* is on."""

    def __init__(self, bar: bool = False, stream: Optional[TextIO] = None, quiet: bool = False):
        self.bar = bar and not quiet
        self.quiet = quiet
        self.stream = stream if stream is not None else sys.stderr
        self._drawn = False
        self._last = 0.0

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        self._clear()
        self.stream.write(f"[spac] {message}\n")
        self.stream.flush()

    def advance(self, done: int, total: int, label: str) -> None:
        """Redraw the bar (rate-limited; always on the last step, which also ends the line)."""
        if not self.bar or total <= 0:
            return
        now = time.monotonic()
        if done < total and now - self._last < MIN_REDRAW_SECONDS:
            return
        self._last = now
        filled = int(BAR_WIDTH * done / total)
        self.stream.write(f"\r[spac] {label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total}")
        self._drawn = done < total
        if not self._drawn:
            self.stream.write("\n")
        self.stream.flush()

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self._drawn = False


def step(progress: Optional[Callable[[str], None]], done: int, total: int, label: str) -> None:
    """Advance *progress*'s bar if it has one (plain callables and None are left alone)."""
    advance = getattr(progress, "advance", None)
    if advance is not None:
        advance(done, total, label)


def for_terminal(enabled: Optional[bool], quiet: bool, stream: Optional[TextIO] = None) -> Progress:
    """The CLI's progress: a bar if *enabled*, or, when None, if the stream is a terminal."""
    stream = stream if stream is not None else sys.stderr
    bar = stream.isatty() if enabled is None else enabled
    return Progress(bar=bar, stream=stream, quiet=quiet)
