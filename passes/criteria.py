"""Data-free importance criteria, each a registered pass scoring the atoms of one group.

Magnitude criteria score every coupled parameter slice (producer rows,
consumer columns, BatchNorm entries); the group aggregation is shared code in
:mod:`spa_compiler.importance`.  Higher score = more important = kept.
"""
from __future__ import annotations

import numpy as np

from spa_compiler.criterion import Criterion
from spa_compiler.importance import slice_importance
from spa_compiler.registry import register

__all__ = ["Criterion", "RandomCriterion", "L1Criterion", "L2Criterion", "BatchNormScaleCriterion"]


@register("criterion", "random")
class RandomCriterion(Criterion):
    """Uniform random scores (a baseline; seeded by --seed)."""

    def score(self, ctx, group):
        return ctx.rng.random(group.n_atoms)


@register("criterion", "l1")
class L1Criterion(Criterion):
    """Sum of |w| over every parameter slice coupled to the atom."""

    def score(self, ctx, group):
        return slice_importance(ctx, group, lambda r: np.abs(r).sum(axis=1), reduce=self.reduce)


@register("criterion", "l2")
class L2Criterion(Criterion):
    """Group L2 norm over every coupled slice (DepGraph-style); the default data-free magnitude."""

    def score(self, ctx, group):
        squares = slice_importance(ctx, group, lambda r: (r * r).sum(axis=1), reduce=self.reduce)
        return np.sqrt(squares)


@register("criterion", "bn_scale")
class BatchNormScaleCriterion(Criterion):
    """|gamma| of the BatchNormalizations in the group (network slimming); L2 where a group has none."""

    def score(self, ctx, group):
        is_scale = lambda p: p.op == "BatchNormalization" and p.input_index == 1  # noqa: E731
        if not any(is_scale(p) for p in group.params):
            return L2Criterion(self.reduce).score(ctx, group)
        return slice_importance(ctx, group, lambda r: np.abs(r).sum(axis=1), select=is_scale,
                                reduce=self.reduce)
