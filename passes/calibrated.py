"""Activation-based criteria: they read the consumer layers' input statistics (best with --calib).

Both score the consumer side of each atom: what the layers that read a
channel actually receive through it.  With ``--calib`` the statistics come
from real inputs; without, from the same data-free sources OBSPA uses.
"""
from __future__ import annotations

import numpy as np

from spa_compiler.analysis import Group
from spa_compiler.importance import ScoringContext, aggregate

from spa_compiler.registry import register

from .criteria import Criterion, L2Criterion


class _ConsumerStatistic(Criterion):
    needs_statistics = True

    def per_column(self, layer, stats) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, ctx: ScoringContext, group: Group) -> np.ndarray:
        entries = [(e.layer, e.stats) for e in ctx.obs.entries(group) if e.stats is not None]
        if not entries:
            return L2Criterion(self.reduce).score(ctx, group)
        slices = []
        for layer, stats in entries:
            per_column = self.per_column(layer, stats)
            per_position = per_column.reshape(-1, layer.cols_per_position).sum(axis=1)
            slices.append((layer.param, per_position))
        return aggregate(group, slices, self.reduce)


@register("criterion", "activation")
class ActivationCriterion(_ConsumerStatistic):
    """Mean |activation| of each channel at the layers that read it."""

    def per_column(self, layer, stats):
        return stats.abs_mean


@register("criterion", "wanda")
class WandaCriterion(_ConsumerStatistic):
    """Wanda: sum over outputs of |W| times the input's RMS, per channel (weights and activations)."""

    def per_column(self, layer, stats):
        return np.abs(layer.w).sum(axis=0) * np.sqrt(np.maximum(stats.hessian().diag(), 0.0))
