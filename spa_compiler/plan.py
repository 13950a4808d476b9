"""Planning: which atoms of which groups go, from scores and the user's targets.

Local mode removes the same fraction of every group; global mode ranks the
(scaled) atoms of all groups together, capped per group so no layer
collapses.  ``round_to`` keeps channel counts hardware friendly, and the
default *snap* keeps wide layers on multiples of 8 (see :func:`space_multiple`);
a MACs target searches the ratio that meets it with the analytic cost model.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from .analysis import CONSUMER, PRODUCER, DependencyAnalysis, Group
from .errors import UsageError
from .importance import SCORE_SCALINGS, scale_scores

SNAP_MIN_CHANNELS = 32  # layers at least this wide keep a multiple of the snap (narrow ones stay exact)
SNAP_WIDE_CHANNELS = 64  # layers at least this wide keep a multiple of twice the snap (see space_multiple)
DEFAULT_SNAP = 8  # the snap of default plans (``--round-to`` not given): see docs/latency.md


@dataclass(frozen=True)
class PlanOptions:
    ratio: float = 0.5
    global_ranking: bool = False
    max_group_ratio: float = 0.9
    round_to: int = 1
    exclude: Sequence[str] = ()
    score_scaling: str = "mean"  # per-group score scaling before global ranking (importance.SCORE_SCALINGS)
    snap: int = 1  # spaces of SNAP_MIN_CHANNELS channels or more also keep a multiple of this

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise UsageError(f"--ratio must be in [0, 1), got {self.ratio}")
        if self.round_to < 1:
            raise UsageError(f"--round-to must be >= 1, got {self.round_to}")
        if self.snap < 1:
            raise UsageError(f"snap must be >= 1, got {self.snap}")
        if not 0.0 < self.max_group_ratio < 1.0:
            raise UsageError(f"max group ratio must be in (0, 1), got {self.max_group_ratio}")
        if self.score_scaling not in SCORE_SCALINGS:
            raise UsageError(f"unknown score scaling {self.score_scaling!r} (use one of {', '.join(SCORE_SCALINGS)})")


@dataclass
class Plan:
    """Removed atom ids per group id, and why some prunable groups were left alone."""

    removed: dict[int, np.ndarray] = field(default_factory=dict)
    skipped: dict[int, str] = field(default_factory=dict)

    @property
    def n_removed(self) -> int:
        return int(sum(len(v) for v in self.removed.values()))


def excluded_by(group: Group, patterns: Sequence[str]) -> Optional[str]:
    for pattern in patterns:
        for node in group.nodes:
            if fnmatch.fnmatchcase(node, pattern):
                return f"excluded by pattern {pattern!r} (node {node})"
    return None


def _atom_channels(group: Group) -> int:
    """Channels one atom holds in the group's widest producer space (1 for plain channels)."""
    return max(1, group.width // max(group.n_atoms, 1))


def space_multiple(channels: int, round_to: int, snap: int = 1) -> int:
    """The multiple a layer of *channels* channels keeps: *round_to*, and the snap where it is wide.

    Why the snap: onnxruntime's CPU convolutions (blocked NCHWc kernels) and
    GEMM tiles run widths off a multiple of 8 as slowly as the next multiple
    or slower (a depthwise conv of 37 channels 3-4x one of 40), so a plan of
    exact widths can run slower than the dense model (docs/latency.md).
    Narrow layers cost little and would lose too much choice, so they stay exact.

    Layers of ``SNAP_WIDE_CHANNELS`` or more keep a multiple of twice the snap: AVX-512 machines run
    onnxruntime's NCHWc kernels on blocks of 16 channels (this project's machine: 33-48 channels of a
    1x1 conv take the same time, 49-64 too), so a ResNet-50 bottleneck cut to 40 of 64 channels ran as
    slowly as 48 and the plan measured 1.12x its MACs ratio (16: 1.01x, same latency, more channels
    kept).  Twice the snap where the layer is twice as wide keeps the channels given back under a
    quarter of the layer, and a multiple of 16 is one of 8 (AVX2, GPU tensor cores).
    """
    if channels < SNAP_MIN_CHANNELS or snap <= 1:
        return round_to
    return math.lcm(round_to, 2 * snap if channels >= SNAP_WIDE_CHANNELS else snap)


def group_snap(group: Group, snap: int) -> int:
    """The snap a group's widths keep: none where every layer holds an atom as blocks of a snap or more (heads).

    A head already is a block of ``head_dim`` channels in every projection and the
    attention kernels tile on ``head_dim``, which pruning never changes; a snap in
    channels would instead demand a head count (12-channel heads, snap 16: only
    all 4 heads), so a light plan could never cut a head of a small-head model.
    A group with a layer of one channel per atom (any conv or linear group, with
    reshaped spaces or not) keeps the snap.
    """
    spaces = weight_spaces(group) if snap > 1 else []
    if not spaces:
        return snap
    per_atom = min(len(group.atom_of[s]) // max(len(np.unique(group.atom_of[s])), 1) for s in spaces)
    return 1 if per_atom >= snap else snap


def _rounded_keep(group: Group, keep: int, round_to: int) -> int:
    """Round the kept atom count up so kept channels are a multiple of *round_to*."""
    n = group.n_atoms
    step = round_to // math.gcd(round_to, _atom_channels(group))
    keep = max(1, keep)
    if step > 1:
        keep = min(n, int(math.ceil(keep / step) * step))
    return keep


def candidate_groups(analysis: DependencyAnalysis, options: PlanOptions, plan: Plan) -> list[Group]:
    groups = []
    for group in analysis.prunable_groups:
        reason = excluded_by(group, options.exclude)
        if reason:
            plan.skipped[group.id] = reason
        else:
            groups.append(group)
    return groups


def make_plan(analysis: DependencyAnalysis, scores: dict[int, np.ndarray], options: PlanOptions) -> Plan:
    """Choose the atoms to remove (lowest scores first) under *options* (validated when built)."""
    plan = Plan()
    groups = [g for g in candidate_groups(analysis, options, plan) if g.id in scores]
    if options.ratio == 0 or not groups:
        return plan
    if options.global_ranking:
        counts = _global_counts(groups, scores, options)
    else:
        counts = {g.id: int(math.floor(options.ratio * g.n_atoms + 1e-9)) for g in groups}
    return _remove_lowest(plan, groups, scores, counts, options)


def plan_from_ratios(analysis: DependencyAnalysis, scores: dict[int, np.ndarray], ratios: dict[int, float],
                     options: PlanOptions) -> Plan:
    """A plan with its own ratio per group (the ``--max-error`` allocation); other groups are kept whole."""
    plan = Plan()
    groups = [g for g in candidate_groups(analysis, options, plan) if g.id in scores and ratios.get(g.id, 0) > 0]
    counts = {g.id: int(math.floor(ratios[g.id] * g.n_atoms + 1e-9)) for g in groups}
    return _remove_lowest(plan, groups, scores, counts, options)


def _remove_lowest(plan: Plan, groups: list[Group], scores: dict[int, np.ndarray], counts: dict[int, int],
                   options: PlanOptions) -> Plan:
    """Remove the *counts* lowest-scored atoms of each group (rounded, every tensor kept non-empty)."""
    for group in groups:
        multiple = space_multiple(group.width, options.round_to, group_snap(group, options.snap))
        keep = _rounded_keep(group, group.n_atoms - counts[group.id], multiple)
        n_remove = group.n_atoms - keep
        if n_remove <= 0:
            continue
        order = np.argsort(scores[group.id], kind="stable")
        removed = capped_and_rounded(group, order[:n_remove], scores[group.id], options.max_group_ratio,
                                     options.round_to, options.snap)
        if len(removed):
            plan.removed[group.id] = removed
    return plan


def capped_and_rounded(group: Group, removed: np.ndarray, scores: np.ndarray, max_ratio: float,
                       round_to: int, snap: int = 1) -> np.ndarray:
    """*removed* with the best atoms given back until every tensor keeps its share and its multiple."""
    return round_every_space(group, _keep_every_space(group, removed, scores, max_ratio), scores, round_to, snap)


def _keep_every_space(group: Group, removed: np.ndarray, scores: np.ndarray, max_ratio: float) -> np.ndarray:
    """Give back the best atoms of any tensor that would keep less than ``1 - max_ratio`` of its channels.

    Atoms can be uneven (a ShuffleNet stream, a DenseNet concat), so a group-level
    ratio does not by itself keep channels in every tensor; a tensor left with
    none would be a 0-channel tensor no runtime accepts.
    """
    gone = np.zeros(group.n_atoms, dtype=bool)
    gone[removed] = True
    for space in group.spaces:
        atoms = group.atom_of[space]
        need = max(1, int(math.ceil((1.0 - max_ratio) * len(atoms))))
        while len(atoms) and (~gone[atoms]).sum() < need:
            candidates = np.unique(atoms[gone[atoms]])
            gone[candidates[np.argmax(scores[candidates])]] = False
    return np.flatnonzero(gone)


def weight_spaces(group: Group) -> list:
    """The spaces a layer's weight is cut along: producer outputs and consumer inputs (in group order)."""
    return list(dict.fromkeys(p.space for p in group.params if p.role in (PRODUCER, CONSUMER)))


def round_every_space(group: Group, removed: np.ndarray, scores: np.ndarray, round_to: int,
                      snap: int = 1) -> np.ndarray:
    """Give back the best removed atoms until every weight space keeps its multiple (or all of it).

    The multiple is *round_to*, and the snap in wide spaces (:func:`space_multiple`).

    Rounding the group's atom count is not enough where a group holds several
    layers' channels (a DenseNet or Inception concat, a split): each producer
    and consumer keeps its own share of the atoms.  Runs after the caps and
    only gives atoms back, so the caps still hold and the loop ends (at worst
    with the whole group kept).
    """
    snap = group_snap(group, snap)
    if max(round_to, snap) <= 1 or not len(removed):
        return removed
    gone = np.zeros(group.n_atoms, dtype=bool)
    gone[removed] = True
    spaces = weight_spaces(group)
    changed = True
    while changed:
        changed = False
        for space in spaces:
            atoms = group.atom_of[space]
            kept = int((~gone[atoms]).sum())
            multiple = space_multiple(len(atoms), round_to, snap)
            if kept == len(atoms) or kept % multiple == 0:
                continue
            back = np.unique(atoms[gone[atoms]])
            back = back[np.argsort(-scores[back], kind="stable")]
            multiplicity = np.bincount(atoms, minlength=group.n_atoms)[back]
            total = kept + np.cumsum(multiplicity)
            first = int(np.flatnonzero((total % multiple == 0) | (total == len(atoms)))[0])
            gone[back[:first + 1]] = False
            changed = True
    return np.flatnonzero(gone)


def _global_counts(groups: list[Group], scores: dict[int, np.ndarray], options: PlanOptions) -> dict[int, int]:
    """How many atoms each group loses when all atoms are ranked together."""
    pool_scores, pool_groups = [], []
    for group in groups:
        pool_scores.append(scale_scores(np.asarray(scores[group.id], dtype=np.float64), options.score_scaling))
        pool_groups.append(np.full(group.n_atoms, group.id))
    flat_scores = np.concatenate(pool_scores)
    flat_groups = np.concatenate(pool_groups)
    target = int(math.floor(options.ratio * len(flat_scores) + 1e-9))
    caps = {g.id: min(g.n_atoms - 1, int(math.floor(options.max_group_ratio * g.n_atoms))) for g in groups}
    counts = {g.id: 0 for g in groups}
    taken = 0
    for index in np.argsort(flat_scores, kind="stable"):
        if taken >= target:
            break
        gid = int(flat_groups[index])
        if counts[gid] < caps[gid]:
            counts[gid] += 1
            taken += 1
    return counts


def search_ratio(make: Callable[[float], Plan], cost_of: Callable[[Plan], float], target: float,
                 iterations: int = 14) -> tuple[Plan, float]:
    """Bisect the ratio so the plan's cost is at most *target* (a fraction of the dense cost, in (0, 1])."""
    lo, hi = 0.0, 0.95
    best = make(hi)
    if cost_of(best) > target:
        return best, hi  # the closest we can get
    for _ in range(iterations):
        mid = (lo + hi) / 2
        plan = make(mid)
        if cost_of(plan) <= target:
            hi, best = mid, plan
        else:
            lo = mid
    return best, hi
