"""OBSPA: Optimal Brain SPA, a criterion that ranks atoms by the output error left after compensation.

Greedy over each group: the atom whose removal, with every consumer layer's
weights re-solved (OBS), costs least (summed over consumers, each normalized
by its output energy) goes first; weights and inverse Hessians are updated
before the next choice.  Scores are the cumulative normalized cost at the
step an atom goes, so they compare across groups: obspa ranks globally unless
told ``--local`` (measured at equal MACs: more accuracy on the digits CNN and
ViT, a tie on the MLP; see docs/obspa.md).  The pipeline then applies the compensation itself
(:mod:`spa_compiler.obspa.compensate`).
"""
from __future__ import annotations

import numpy as np

from spa_compiler.analysis import Group
from spa_compiler.obspa.blas import threads_for
from spa_compiler.obspa.compensate import ObsContext
from spa_compiler.importance import ScoringContext
from spa_compiler.obspa.greedy import ConsumerState
from spa_compiler.obspa.parallel import pool_map
from spa_compiler.registry import register

from .criteria import Criterion, L2Criterion

MAX_GREEDY_FRACTION = 0.95
STEPS_PER_GROUP = 64  # beyond this many atoms, remove several per step (blockwise greedy)


@register("criterion", "obspa")
class ObspaCriterion(Criterion):
    """Optimal Brain SPA: OBS cost after compensation, data-free Hessians (default for trained models)."""

    needs_statistics = True
    compensates = True
    prefers_global = True  # costs are normalized by each layer's output energy, so they rank across layers
    global_score_scaling = "none"

    def score(self, ctx: ScoringContext, group: Group) -> np.ndarray:
        obs: ObsContext = ctx.obs
        entries = obs.entries(group)
        if not entries:
            return L2Criterion(self.reduce).score(ctx, group)
        with threads_for(max(len(entry.hessian.units) for entry in entries)):
            return self._greedy(entries, group)

    def score_all(self, ctx: ScoringContext, groups, done) -> list[np.ndarray]:
        """Every group's greedy, side by side on the cores (:mod:`spa_compiler.obspa.parallel`): the groups'
        consumers, inverses and downdates are their own, so each group scores as it would alone."""
        obs: ObsContext = ctx.obs
        work = [sum(len(entry.hessian.units) ** 3 for entry in obs.entries(group)) for group in groups]  # built here
        return pool_map(lambda index: self.score(ctx, groups[index]), range(len(groups)), cost=work.__getitem__,
                        done=done)

    def _greedy(self, entries, group: Group) -> np.ndarray:
        state = [ConsumerState(entry, _positions_by_atom(group.atom_of[entry.layer.param.space], group.n_atoms))
                 for entry in entries]
        n = group.n_atoms
        alive = np.ones(n, dtype=bool)
        scores = np.full(n, np.inf)
        total = 0.0
        budget = int(MAX_GREEDY_FRACTION * n)
        step = max(1, int(np.ceil(budget / STEPS_PER_GROUP)))
        removed = 0
        while removed < budget:
            candidates = np.flatnonzero(alive)
            costs = sum(consumer.costs(candidates) for consumer in state)
            take = np.argsort(costs, kind="stable")[: min(step, budget - removed)]
            for index in take:
                total += float(costs[index])
                scores[candidates[index]] = total
            alive[candidates[take]] = False
            for consumer in state:  # one joint downdate per step: equal to removing the atoms one by one
                consumer.remove(candidates[take])
            removed += len(take)
        finite = scores[np.isfinite(scores)]
        scores[~np.isfinite(scores)] = (finite.max() if len(finite) else 0.0) * 2 + 1.0
        return scores


def _positions_by_atom(atom_of: np.ndarray, n_atoms: int) -> list[np.ndarray]:
    """Positions of each atom in one space (possibly none), in one sort instead of a scan per atom."""
    order = np.argsort(atom_of, kind="stable")
    return np.split(order, np.cumsum(np.bincount(atom_of, minlength=n_atoms))[:-1])

