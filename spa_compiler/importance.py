"""Group-level importance: what every criterion shares.

A criterion scores positions of parameter slices; this module turns those into
one score per atom of a group (sum, mean or max over every coupled slice, the
DepGraph-style group importance) and optionally normalizes per group so that
scores compare across groups in global ranking.  Criteria never repeat it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import numpy as np
import onnx_graphsurgeon as gs

from .analysis import DependencyAnalysis, Group, ParamSlice
from .ir import constants_of

REDUCTIONS = ("sum", "mean", "max")
SCORE_SCALINGS = ("none", "mean", "max", "sum")


@dataclass
class ScoringContext:
    """What a criterion may read: constants by name, the analysis, a seeded generator."""

    graph: gs.Graph
    analysis: DependencyAnalysis
    rng: np.random.Generator
    obs: Optional[object] = None  # ObsContext (consumer layers + statistics) for criteria that need it
    progress: Optional[Callable[[str], None]] = None  # long-running criteria report here

    def __post_init__(self) -> None:
        self._constants = constants_of(self.graph)

    def values(self, name: str) -> np.ndarray:
        return np.asarray(self._constants[name].values)


def rows(values: np.ndarray, axis: int) -> np.ndarray:
    """The slice's positions as rows: (size along axis, everything else) in float64."""
    moved = np.moveaxis(np.asarray(values, dtype=np.float64), axis, 0)
    return moved.reshape(moved.shape[0], -1)


def aggregate(group: Group, slice_scores: Iterable[tuple[ParamSlice, np.ndarray]],
              reduce: str = "sum") -> np.ndarray:
    """Combine per-position scores of every slice into one score per atom.

    Positions of one atom within one slice are summed (they are removed
    together); across slices the scores are reduced by *reduce*.
    """
    per_slice = []
    for param, scores in slice_scores:
        atom_ids = group.atom_of[param.space]
        per_slice.append(np.bincount(atom_ids, weights=scores, minlength=group.n_atoms))
    if not per_slice:
        return np.zeros(group.n_atoms)
    stacked = np.stack(per_slice)
    if reduce == "sum":
        return stacked.sum(axis=0)
    if reduce == "mean":
        return stacked.mean(axis=0)
    if reduce == "max":
        return stacked.max(axis=0)
    raise ValueError(f"unknown reduction {reduce!r} (use one of {REDUCTIONS})")


def scale_scores(scores: np.ndarray, how: str) -> np.ndarray:
    """Per-group normalization so groups of different scale can be ranked together."""
    if how == "none":
        return scores
    denom = {"mean": np.mean, "max": np.max, "sum": np.sum}[how](np.abs(scores)) if len(scores) else 1.0
    return scores / denom if denom > 0 else scores


def slice_importance(ctx: ScoringContext, group: Group, per_position: Callable[[np.ndarray], np.ndarray],
                     select: Optional[Callable[[ParamSlice], bool]] = None,
                     reduce: str = "sum") -> np.ndarray:
    """Score atoms by applying *per_position* (rows -> one value per row) to each selected slice."""
    chosen = [p for p in group.params if select is None or select(p)]
    return aggregate(group, ((p, per_position(rows(ctx.values(p.tensor), p.axis))) for p in chosen), reduce)
