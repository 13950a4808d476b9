"""The contract of a criterion pass: what it computes and what it asks of the driver.

A criterion scores the atoms of one group (higher = more important = kept).
What it needs from the pipeline is declared here as class attributes, so the
driver reads one typed contract instead of probing passes with ``getattr``;
the registry refuses a criterion that does not derive from this base.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ClassVar, Optional, Sequence

import numpy as np

if TYPE_CHECKING:
    from .analysis import Group
    from .importance import ScoringContext


class Criterion:
    """Base class: ``score(ctx, group)`` returns one float per atom of *group*."""

    #: the driver collects consumer-layer statistics (``ctx.obs``) before scoring
    needs_statistics: ClassVar[bool] = False
    #: the driver re-solves consumer weights for the removed channels (unless --no-compensate)
    compensates: ClassVar[bool] = False
    #: scores compare across groups, so global ranking is the default (unless --local)
    prefers_global: ClassVar[bool] = False
    #: per-group score scaling for global ranking (one of importance.SCORE_SCALINGS); None: the plan's default
    global_score_scaling: ClassVar[Optional[str]] = None

    def __init__(self, reduce: str = "sum"):
        self.reduce = reduce

    def score(self, ctx: "ScoringContext", group: "Group") -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def score_all(self, ctx: "ScoringContext", groups: Sequence["Group"],
                  done: Callable[[int, np.ndarray], None]) -> list[np.ndarray]:
        """``score`` of every group, in order, calling *done(index, scores)* as each is finished; a criterion
        whose groups are costly and independent runs them side by side (OBSPA's greedy)."""
        out = []
        for index, group in enumerate(groups):
            out.append(self.score(ctx, group))
            done(index, out[-1])
        return out
