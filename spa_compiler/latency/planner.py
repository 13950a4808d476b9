"""``--target-speedup S`` / ``--target-latency MS``: spend the pruning budget where latency drops most.

The plan starts from the dense model and repeatedly narrows the one group
whose next width on its latency staircase saves the most predicted
milliseconds per unit of importance lost (the criterion's scores, scaled per
group as global ranking scales them), until the predicted latency meets the
target: a greedy knapsack in the spirit of HALP (Shen et al., 2022).

Widths are multiples of the group's *step*, the least common multiple of
the fast width multiples its layers' op kinds have on this provider (from the
latency tables, :mod:`.table`), so the planner only stands on the staircase's
treads.  The prediction is the sum of the timed layers at their widths plus
the model's measured rest (everything the tables do not time: pooling,
elementwise ops, reorders), which is scaled with the layers' kept output
channels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..analysis import CONSUMER, PRODUCER, DependencyAnalysis, Group
from ..importance import scale_scores
from ..plan import Plan, PlanOptions, candidate_groups, capped_and_rounded
from .layers import DEPTHWISE, Layer
from .table import LatencyTable

LOOKAHEAD = 4  # a move may skip this many treads (a flat stretch of one curve is no saving)


@dataclass
class GroupWidths:
    """One group's ranking and the kept-atom counts the planner may choose."""

    group: Group
    rank: np.ndarray  # rank of each atom, 0 = most important
    loss: np.ndarray  # loss[k]: scaled importance removed when the best k atoms are kept
    allowed: list[int]  # kept-atom counts on the staircase, ascending, the full count last
    step: int  # channels
    kept: int = 0
    space_ranks: dict = field(default_factory=dict)  # space -> sorted ranks of its positions' atoms

    def channels(self, space, kept: Optional[int] = None) -> int:
        """Channels *space* keeps when the best *kept* atoms (default: the current count) stay."""
        return int(np.searchsorted(self.space_ranks[space], self.kept if kept is None else kept))


class LatencyModel:
    """Predicted milliseconds of the model at any choice of group widths (see the module docstring)."""

    def __init__(self, layers: list[Layer], table: LatencyTable, analysis: DependencyAnalysis,
                 dense_ms: Optional[float] = None) -> None:
        self.layers, self.analysis = layers, analysis
        self.curves = [table.curves(layer) for layer in layers]
        self.full = [self.layer_ms(i, layer.c_in, layer.c_out) for i, layer in enumerate(layers)]
        timed = sum(self.full)
        self.dense_ms = dense_ms if dense_ms is not None else timed
        self.rest = max(self.dense_ms - timed, 0.0)
        self.scale = self.dense_ms / max(timed + self.rest, 1e-9)  # single-op sums may exceed the model
        # each layer's share of the rest, scaled by its kept output channels
        self.rest_share = [self.rest * ms / max(timed, 1e-9) for ms in self.full]

    def layer_ms(self, index: int, c_in: int, c_out: int) -> float:
        curves = self.curves[index]
        if self.layers[index].kind == DEPTHWISE:
            return curves["both"].at(c_out)
        out, into = curves["out"], curves["in"]
        return out.at(c_out) * into.at(c_in) / max(out.full, 1e-9)

    def group_of(self, space) -> Optional[int]:
        return None if space is None else self.analysis.group_of.get(space)


class LatencyPlanner:
    """The greedy latency-per-importance planner for one compiled model."""

    def __init__(self, analysis: DependencyAnalysis, scores: dict[int, np.ndarray], options: PlanOptions,
                 model: LatencyModel, table: LatencyTable) -> None:
        self.analysis, self.scores, self.options, self.model = analysis, scores, options, model
        self.skipped = Plan()
        groups = {g.id: g for g in candidate_groups(analysis, options, self.skipped) if g.id in scores}
        self.touching: dict[int, list[int]] = {gid: [] for gid in groups}  # group id -> layer indices
        step_of: dict[int, int] = {}
        for index, layer in enumerate(model.layers):
            for space in {layer.out_space, layer.in_space} - {None}:
                gid = model.group_of(space)
                if gid in groups and index not in self.touching[gid]:  # a depthwise conv: both spaces, once
                    self.touching[gid].append(index)
                    step_of[gid] = math.lcm(step_of.get(gid, 1), table.step(layer.kind, layer.dtype))
        self.widths = {gid: self._widths(groups[gid], step_of.get(gid, 1)) for gid in groups if self.touching[gid]}

    def _widths(self, group: Group, step: int) -> GroupWidths:
        scores = np.asarray(self.scores[group.id], dtype=np.float64)
        order = np.argsort(-scores, kind="stable")
        rank = np.empty(group.n_atoms, dtype=np.int64)
        rank[order] = np.arange(group.n_atoms)
        # scaled like global ranking, then weighted by the layers that read or write the group's channels:
        # a residual stream's channel lives in every block it joins (scaling alone makes it count once)
        # and by the channels an atom holds: scaling makes an atom's mean score 1 whatever it holds, so an
        # attention head (16-64 channels) would cost as little as one MLP unit (digits ViT: 3 of 4 heads cut)
        layers_of_group = len({p.node for p in group.params if p.role in (PRODUCER, CONSUMER)})
        atom_channels = max(1, group.width // max(group.n_atoms, 1))
        scaled = scale_scores(scores, self.options.score_scaling)[order] * max(1, layers_of_group) * atom_channels
        loss = np.concatenate([np.cumsum(scaled[::-1])[::-1], [0.0]])  # loss[k] = sum of scaled[k:]
        atom_step = step // math.gcd(step, atom_channels)
        lowest = max(1, math.ceil((1.0 - self.options.max_group_ratio) * group.n_atoms))
        allowed = [k for k in range(atom_step, group.n_atoms, atom_step) if k >= lowest] + [group.n_atoms]
        widths = GroupWidths(group, rank, loss, allowed, step, kept=group.n_atoms)
        widths.space_ranks = {space: np.sort(rank[group.atom_of[space]]) for space in group.spaces}
        return widths

    # -- prediction ----------------------------------------------------------------------------------
    def _layer_now(self, index: int, override: Optional[tuple[int, int]] = None) -> tuple[float, float]:
        """(ms, kept output fraction) of a layer at the current widths, one group's count overridden."""
        layer = self.model.layers[index]
        c_out = self._channels(layer.out_space, layer.c_out, override)
        c_in = self._channels(layer.in_space, layer.c_in, override)
        return self.model.layer_ms(index, c_in, c_out), c_out / layer.c_out

    def _channels(self, space, full: int, override) -> int:
        gid = self.model.group_of(space)
        widths = self.widths.get(gid)
        if widths is None:
            return full
        kept = override[1] if override is not None and override[0] == gid else None
        return max(1, widths.channels(space, kept))

    def _ms_of(self, layer_ids, override=None) -> float:
        """Predicted ms of the given layers (with their share of the rest) at the current widths."""
        total = 0.0
        for index in layer_ids:
            ms, kept_out = self._layer_now(index, override)
            total += ms + self.model.rest_share[index] * kept_out
        return total * self.model.scale

    def predicted_ms(self) -> float:
        return self._ms_of(range(len(self.model.layers)))

    # -- planning ------------------------------------------------------------------------------------
    def _moves(self, gid: int) -> list[tuple[float, int, float, float]]:
        """(saved ms per importance lost, new kept count, saved ms, importance lost) of the group's next treads."""
        widths = self.widths[gid]
        position = widths.allowed.index(widths.kept)
        now = self._ms_of(self.touching[gid])
        moves = []
        for new in reversed(widths.allowed[max(0, position - LOOKAHEAD):position]):
            saved = now - self._ms_of(self.touching[gid], (gid, new))
            lost = widths.loss[new] - widths.loss[widths.kept]
            if saved > 0:
                moves.append((saved / max(lost, 1e-12), new, saved, lost))
        return moves

    def plan(self, target_ms: float) -> tuple[Plan, dict]:
        """Narrow groups until the predicted latency is at most *target_ms* (or nothing saves time).

        Greedy on saved ms per importance lost, with the last step chosen apart: every step records the
        move that reaches the target for the least importance (a complete plan), then takes the best
        ratio among the moves that do not reach it yet; the cheapest complete plan recorded wins.  Why
        not the best ratio to the end: it can jump far past the target (AttaCut-C's 48 embedding
        channels to 32 and then straight to 16, two thirds of every conv, for a 1.3x target) where only
        reaching the target counts.
        """
        neighbours = {gid: {other for index in self.touching[gid] for other in self._groups_of(index)}
                      for gid in self.widths}
        moves = {gid: self._moves(gid) for gid in self.widths}
        predicted = self.predicted_ms()
        best: Optional[tuple[float, dict[int, int]]] = None  # (importance lost, kept counts) of a complete plan
        while predicted > target_ms:
            need = predicted - target_ms
            options = [(move, gid) for gid, group_moves in moves.items() for move in group_moves]
            finishing = min(((move[3], gid, move[1]) for move, gid in options if move[2] >= need), default=None)
            if finishing is not None:
                lost = self.lost() + finishing[0]
                if best is None or lost < best[0]:
                    best = (lost, {**self.kept(), finishing[1]: finishing[2]})
            going = max(((move[0], gid, move) for move, gid in options if move[2] < need), default=None)
            if going is None:
                break
            _, gid, move = going
            self.widths[gid].kept = move[1]
            predicted -= move[2]
            for other in neighbours[gid]:
                moves[other] = self._moves(other)
        if best is not None:
            for gid, kept in best[1].items():
                self.widths[gid].kept = kept
        return self.to_plan(), {"predicted_ms": self.predicted_ms(), "target_ms": target_ms,
                                "dense_ms": self.model.dense_ms}

    def kept(self) -> dict[int, int]:
        return {gid: widths.kept for gid, widths in self.widths.items()}

    def lost(self) -> float:
        """Importance removed at the current widths (the planner's scaled scores)."""
        return float(sum(widths.loss[widths.kept] for widths in self.widths.values()))

    def _set_fraction(self, fraction: float) -> None:
        """Every group at the first tread keeping at least *fraction* of its atoms (its cap at the least)."""
        for widths in self.widths.values():
            widths.kept = next(k for k in widths.allowed if k >= fraction * widths.group.n_atoms - 1e-9)

    def floor_ms(self) -> float:
        """Predicted ms with every group at its narrowest allowed width: the most pruning can gain (Amdahl).

        Leaves the planner at the dense widths."""
        self._set_fraction(0.0)
        floor = self.predicted_ms()
        self._set_fraction(1.0)
        return floor

    def uniform(self, target_ms: float, iterations: int = 30) -> tuple[Plan, dict]:
        """The same kept fraction in every group (on its treads), the largest whose prediction meets *target_ms*.

        The uniform candidate the latency plan is measured against (:mod:`.choice`); the narrowest
        plan when the target is out of reach.
        """
        lo, hi = 0.0, 1.0
        self._set_fraction(lo)
        if self.predicted_ms() <= target_ms:
            for _ in range(iterations):
                mid = (lo + hi) / 2
                self._set_fraction(mid)
                lo, hi = (mid, hi) if self.predicted_ms() <= target_ms else (lo, mid)
            self._set_fraction(lo)
        return self.to_plan(), {"predicted_ms": self.predicted_ms(), "target_ms": target_ms,
                                "dense_ms": self.model.dense_ms}

    def _groups_of(self, index: int) -> set[int]:
        layer = self.model.layers[index]
        return {gid for gid in (self.model.group_of(layer.out_space), self.model.group_of(layer.in_space))
                if gid in self.widths}

    def to_plan(self) -> Plan:
        plan = Plan(skipped=dict(self.skipped.skipped))
        for gid, widths in self.widths.items():
            if widths.kept >= widths.group.n_atoms:
                continue
            removed = np.flatnonzero(widths.rank >= widths.kept)
            removed = capped_and_rounded(widths.group, removed, self.scores[gid], self.options.max_group_ratio,
                                         widths.step)
            if len(removed):
                plan.removed[gid] = removed
        return plan

