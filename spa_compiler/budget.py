"""``--max-error F``: prune as much as possible while the outputs' relative L2 error stays at most F.

Per-layer costs (weight norms, OBS costs) do not say how far the *outputs*
move: a real CTC reader or a wake-word net collapses from a few channels of
one sensitive layer.  So the budget is allocated by measured end-to-end
sensitivity:

1. *Probe*: every prunable group alone is pruned at a few ratios
   (``PROBE_RATIOS``, its lowest-scored atoms as the criterion ranks them, with
   OBSPA's compensation when it compensates) and the output error on the
   measurement inputs is measured.  Probes do not rewrite: one onnxruntime
   session of the dense graph takes the consumer weights as inputs, and a
   probe feeds them with the removed input slices zeroed, which is exactly
   the pruned model on exact groups (the oracle's masking, :mod:`oracle`).
   A group's probes stop at the first ratio whose error alone exceeds F.
2. *Allocate*: each group's probes form a curve of MACs saved against
   squared error; its upper concave hull gives increments of decreasing
   efficiency, and all groups' increments sorted by efficiency give one
   global order: its first N increments are the allocation for budget N.
3. *Bisect* N for the largest budget whose combined plan measures at most F
   (by masking when every pruned group is exact, else by a real rewrite).
   With ``--target-macs`` the budget stops where the MACs target is met.

The caller writes the chosen plan, measures the written model and calls
:meth:`MaxErrorSearch.back_off` while it exceeds F, so the result never does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import onnx_graphsurgeon as gs

from .analysis.rules import rule_for
from .cost import MacsEstimator, node_macs, totals
from .fidelity import Measurement, Reference, compare, relative_error, run_batches, session_measuring
from .ir import all_nodes, constants_of, to_model
from .oracle import masked_consumers
from .pipeline import Compiled, apply_plan
from .plan import Plan, PlanOptions, candidate_groups, plan_from_ratios
from .progress import step
from .rewrite import kept_fraction
from .shapes import concrete_shapes
from .suffix import SuffixRunner

PROBE_RATIOS = (1 / 64, 1 / 32, 1 / 16, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)
# A MACs target needs no finer steps than these (``--max-error`` probes the small ratios too: a sensitive
# layer may afford only 1/64 of its channels within a tight limit).
TARGET_PROBE_RATIOS = (1 / 16, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)
PROBE_SAMPLES = 8  # probes run on the first measurement batches only; the bisection uses all of them
# ... and on at least this many output values (up to every measurement batch): a probe's relative error is a
# ratio of norms over the values it sees, and a model with one number per sample (a window tagger's sigmoid)
# gave 8.  oskut-ws-augment-60p's first 8 were dominated by one or two saturated outputs that no group alone
# moves: every group of its sensitivity plan probed at 0.005-0.10, the plan on the same 8 samples at 0.87,
# while on all 16 measurement samples and on real text each group's error adds up to the plan's
# (docs/realmodels.md).  16 is every batch of the default measurement there; open-nsfw (two scores per
# image, 16 per batch) and every model with more outputs per sample probe as before.
PROBE_VALUES = 16

TARGET_MACS_SLACK = 0.005  # the MACs estimate of a plan that meets a target to within rounding
REFINE_STEPS = 8  # bisections of the last increment's ratio towards the MACs target

Updates = Optional[dict[str, np.ndarray]]


class MaskedRunner:
    """One session of the dense graph whose consumer weights (and what OBSPA may update) are inputs.

    Running a plan is feeding its masked (and compensated) weights: no
    rewrite, no new session.  ``error`` returns None when the plan needs a
    tensor the session does not take as an input (the caller then rewrites).
    With *from_change*, the run starts at the last cut before the first layer the plan changes
    (:mod:`suffix`: a probe of one group skips the dense prefix; same outputs).
    """

    def __init__(self, compiled: Compiled, names: set[str], measured: list[str]) -> None:
        graph = compiled.graph.copy()
        constants = {n: t for n, t in constants_of(graph).items() if n in names}
        self.base = {n: np.asarray(t.values) for n, t in constants.items()}
        inputs = {n: gs.Variable(n, dtype=v.dtype, shape=list(v.shape)) for n, v in self.base.items()}
        for node in all_nodes(graph):  # a body reads a graph input of the outer scope like a constant
            for i, tensor in enumerate(node.inputs):
                if tensor is not None and tensor.name in inputs:
                    node.inputs[i] = inputs[tensor.name]
        graph.inputs.extend(inputs.values())
        self.session, self.measured = session_measuring(to_model(graph, compiled.meta), measured)
        self._graph, self._compiled = graph, compiled
        self._suffix: Optional[SuffixRunner] = None
        self._cutting = True  # False once onnxruntime refused a cut graph: every run whole

    def fidelity(self, analysis, plan: Plan, updates: Updates, reference: Reference, batches,
                 from_change: bool = False) -> Optional[dict]:
        if any(name not in self.base for name in (updates or {})):
            return None
        current = {**self.base, **{k: np.asarray(v, dtype=self.base[k].dtype) for k, v in (updates or {}).items()}}
        changed = {**{k: current[k] for k in (updates or {})}, **masked_consumers(analysis, plan, current.__getitem__)}
        if any(name not in self.base for name in changed):
            return None
        fed = {**current, **changed}
        reference = reference.only(self.measured)
        runs = self._from_change(changed, fed, reference, batches) if from_change else None
        if runs is None:
            runs = run_batches(self.session, reference.names, ({**feeds, **fed} for feeds in batches))
        return compare(reference, runs)

    def _from_change(self, changed, fed, reference: Reference, batches):
        """The outputs per batch from the last cut before the first changed layer, or None (whole graph)."""
        if not self._cutting:
            return None
        try:
            if self._suffix is None:
                shapes = concrete_shapes(self._compiled.graph, self._compiled.spec)
                self._suffix = SuffixRunner(self._graph, self._compiled.meta, self.base,
                                            [node_macs(node, shapes) for node in self._graph.nodes])
            cut = self._suffix.cut_for(list(changed))
            if cut is None:
                return None
            return self._suffix.run(cut, reference.names, list(batches), reference.outputs, fed)
        except Exception:  # noqa: BLE001 - a graph onnxruntime will not cut: run it whole, as before
            self._cutting = False
            return None


def _updatable(compiled: Compiled, groups) -> set[str]:
    """Consumer weights of *groups*, with the biases and following BatchNorm statistics OBSPA may change."""
    from .analysis import CONSUMER

    nodes = {n.name: n for n in all_nodes(compiled.graph)}
    names: set[str] = set()
    for group in groups:
        for param in group.params_by_role(CONSUMER):
            names.add(param.tensor)
            node = nodes.get(param.node)
            if node is None:
                continue
            rule = rule_for(node)
            bias = getattr(rule, "bias_input", lambda n: None)(node) if rule is not None else None
            for index in {2, bias} - {None}:  # Gemm/Conv biases, and a recurrent layer's B
                if len(node.inputs) > index and isinstance(node.inputs[index], gs.Constant):
                    names.add(node.inputs[index].name)
            readers = node.outputs[0].outputs if node.outputs else []
            if len(readers) == 1 and readers[0].op == "BatchNormalization":
                names.update(t.name for t in readers[0].inputs[3:5] if isinstance(t, gs.Constant))
    return names


@dataclass
class Probe:
    ratio: float
    saved: float   # MACs removed, as a fraction of the dense MACs
    error: float


@dataclass
class MaxErrorSearch:
    """The sensitivity-allocated budget search for one model; see the module docstring."""

    compiled: Compiled
    scores: dict[int, np.ndarray]
    options: PlanOptions
    measurement: Measurement
    limit: float
    target_macs: Optional[float] = None
    updates_for: Callable[[Plan], Updates] = lambda plan: None
    progress: Optional[Callable[[str], None]] = None
    probe_ratios: tuple[float, ...] = PROBE_RATIOS
    compensate_probes: bool = True  # False: probes measure plain removal (OBSPA's solves cost far more than a run)
    compensated_groups: frozenset[int] = frozenset()  # probed compensated all the same (obspa/recurrence.py)
    probes: dict[int, list[Probe]] = field(default_factory=dict)
    evaluations: int = 0
    _order: list[tuple[int, float]] = field(default_factory=list)
    _budget: int = 0
    _runner: Optional[MaskedRunner] = None
    probe_batches: int = 0  # measurement batches a probe runs (:func:`probe_batch_count`)

    def __post_init__(self) -> None:
        # the shapes of the input spec, as the MACs target's own plan and the report count them
        self._shapes = concrete_shapes(self.compiled.graph, self.compiled.spec)
        self.dense_macs = max(totals(self.compiled.graph, self._shapes)[1], 1)
        self._macs = MacsEstimator(self.compiled.graph, self._shapes)
        self.groups = [g for g in candidate_groups(self.compiled.analysis, self.options, Plan())
                       if g.id in self.scores]
        self.probe_batches = probe_batch_count(self.measurement.inputs.batches, self.measurement.reference)
        try:
            self._runner = MaskedRunner(self.compiled, _updatable(self.compiled, self.groups),
                                        self.measurement.reference.names)
        except Exception:  # noqa: BLE001 - a runtime that refuses weights as inputs: every probe rewrites
            self._runner = None

    # -- measuring ---------------------------------------------------------------------------------
    def plan_for(self, ratios: dict[int, float]) -> Plan:
        return plan_from_ratios(self.compiled.analysis, self.scores, ratios, self.options)

    def macs_fraction(self, plan: Plan) -> float:
        kept = kept_fraction(self.compiled.analysis, plan)
        return self._macs(kept) / self.dense_macs

    def error(self, plan: Plan, probe: bool = False, plain: bool = False) -> float:
        """Measured relative output error of *plan* (masked when exact, else rewritten); *plain*: without
        compensation, whatever the search's setting."""
        return relative_error(self.fidelity(plan, probe, plain))

    def fidelity(self, plan: Plan, probe: bool = False, plain: bool = False) -> dict:
        """:func:`fidelity.compare` of *plan*'s outputs with the dense ones, measured as :meth:`error` says."""
        self.evaluations += 1
        reference, batches = self.measurement.reference, self.measurement.inputs.batches
        if probe:
            keep = self.probe_batches
            reference, batches = Reference(reference.names, reference.outputs[:keep]), batches[:keep]
        plain_probe = probe and not self.compensate_probes and not set(plan.removed) <= self.compensated_groups
        updates = None if plain or plain_probe else self.updates_for(plan)
        analysis = self.compiled.analysis
        exact = all(analysis.groups[gid].exact for gid in plan.removed)
        if self._runner is not None and (exact or probe):
            masked = self._runner.fidelity(analysis, plan, updates, reference, batches, from_change=probe)
            if masked is not None:
                return masked
        model, _, _ = apply_plan(self.compiled, plan, updates)
        sess, names = session_measuring(model, reference.names)
        reference = reference.only(names)
        return compare(reference, run_batches(sess, names, batches))

    # -- the search --------------------------------------------------------------------------------
    def probe(self) -> None:
        """Each group alone at increasing ratios, until its error alone exceeds the limit."""
        cap = self.options.max_group_ratio
        ratios = [r for r in self.probe_ratios if r < cap] + [cap]
        for done, group in enumerate(self.groups, 1):
            points, last = [], None
            for ratio in ratios:
                plan = self.plan_for({group.id: ratio})
                removed = plan.n_removed
                if not removed or removed == last:
                    continue
                last = removed
                error = self.error(plan, probe=True)
                if not error <= self.limit:
                    break
                points.append(Probe(ratio, 1.0 - self.macs_fraction(plan), error))
            self.probes[group.id] = points
            step(self.progress, done, len(self.groups), "probing group sensitivity")

    def allocate(self) -> None:
        """The global order of (group, ratio) increments, most MACs saved per squared error first."""
        increments = []
        for gid, points in self.probes.items():
            hull = _upper_hull([((p.error / self.limit) ** 2, p.saved, p.ratio) for p in points])
            for (x0, y0, _), (x1, y1, ratio) in zip(hull, hull[1:]):
                increments.append(((y1 - y0) / max(x1 - x0, 1e-12), gid, ratio))
        increments.sort(key=lambda inc: (-inc[0], inc[1]))
        self._order = [(gid, ratio) for _, gid, ratio in increments]

    def ratios_at(self, budget: int) -> dict[int, float]:
        ratios: dict[int, float] = {}
        for gid, ratio in self._order[:budget]:
            ratios[gid] = ratio
        return ratios

    def plan_at(self, budget: int) -> Plan:
        return self.plan_for(self.ratios_at(budget))

    def search(self) -> Plan:
        """The largest budget whose plan measures at most the limit (and, with a MACs target, no further)."""
        self.probe()
        self.allocate()
        hi = len(self._order)
        if self.target_macs is not None:
            hi = self._first_meeting_target(hi)

        def within(budget: int) -> bool:
            return self.error(self.plan_at(budget)) <= self.limit

        self._budget = hi if hi and within(hi) else _last_true(0, hi, within)
        return self.plan_at(self._budget)

    def meet_target(self) -> Optional[Plan]:
        """The sensitivity allocation's smallest plan meeting the MACs target, or None when it cannot.

        No error bisection: the MACs target is the goal and the limit only stops each group's probes (a
        group alone above it is no part of a plan the caller would keep).  None when the increments the
        probes found do not reach the target.
        """
        self.probe()
        self.allocate()
        self._budget = self._first_meeting_target(len(self._order))
        plan = self._last_step_to_target(self._budget)
        return plan if self.macs_fraction(plan) <= self.target_macs + TARGET_MACS_SLACK else None

    def _last_step_to_target(self, budget: int) -> Plan:
        """The plan at *budget* with its last increment cut back to just meet the MACs target.

        Increments are whole probe steps (a group from 1/4 to 3/8 of its channels): with few groups one step
        can overshoot the target by far more MACs than needed, so the step's ratio is bisected.
        """
        plan = self.plan_at(budget)
        if budget == 0 or self.macs_fraction(plan) > self.target_macs:
            return plan
        gid, high = self._order[budget - 1]
        ratios = self.ratios_at(budget - 1)
        low = ratios.get(gid, 0.0)
        for _ in range(REFINE_STEPS):
            mid = (low + high) / 2
            trial = self.plan_for({**ratios, gid: mid})
            if self.macs_fraction(trial) <= self.target_macs:
                high, plan = mid, trial
            else:
                low = mid
        return plan

    def _first_meeting_target(self, hi: int) -> int:
        """The smallest budget whose estimated MACs meet the target (all of them when none does)."""
        def above(budget: int) -> bool:
            return self.macs_fraction(self.plan_at(budget)) > self.target_macs

        return hi if above(hi) else _last_true(0, hi, above) + 1

    def back_off(self, measured_error: float) -> Optional[Plan]:
        """A smaller plan when the written model measured above the limit; None when it is within."""
        if measured_error <= self.limit:
            return None
        if not self._order and not self.probes:
            return self.search()  # the MACs target's own plan measured within the limit before writing
        if self._budget == 0:
            return None
        self._budget = min(self._budget - 1, (self._budget * 3) // 4)
        return self.plan_at(self._budget)

    def report(self, measured_error: float) -> dict:
        return {"limit": self.limit, "measured": measured_error, "budget": self._budget,
                "increments": len(self._order), "evaluations": self.evaluations,
                "groups_probed": len(self.probes),
                "groups_insensitive": sum(1 for p in self.probes.values() if p and p[-1].ratio >= 0.5)}


def batch_samples(batches: list[dict[str, np.ndarray]]) -> int:
    """Samples in one measurement batch (the leading dim of its first input; 1 for a model without inputs)."""
    first = next(iter(batches[0].values()), None) if batches else None
    return max(1, len(first)) if first is not None and np.ndim(first) else 1


def probe_batch_count(batches: list[dict[str, np.ndarray]], reference: Reference) -> int:
    """How many of the measurement *batches* a sensitivity probe runs: enough for ``PROBE_SAMPLES`` samples,
    and more (up to all of them) until the probe sees ``PROBE_VALUES`` output values of the *reference*."""
    keep = min(len(batches), max(1, -(-PROBE_SAMPLES // batch_samples(batches))))
    values = sum(int(np.size(o)) for outputs in reference.outputs[:keep] for o in outputs)
    while values < PROBE_VALUES and keep < len(batches):
        values += sum(int(np.size(o)) for o in reference.outputs[keep])
        keep += 1
    return max(1, keep)


def _last_true(lo: int, hi: int, ok: Callable[[int], bool]) -> int:
    """The largest n in [lo, hi) with ok(n), for ok true at lo, false at hi and monotone between."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _upper_hull(points: list[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
    """Upper concave hull from the origin (nothing pruned) of (squared error, MACs saved, ratio) points."""
    best: dict[float, tuple[float, float, float]] = {}
    for p in points:
        if p[0] not in best or p[1] > best[p[0]][1]:
            best[p[0]] = p
    hull: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)]
    for p in sorted(best.values()):
        if p[1] <= hull[-1][1]:
            continue
        while len(hull) >= 2 and _slope(hull[-2], hull[-1]) <= _slope(hull[-2], p):
            hull.pop()
        hull.append(p)
    return hull


def _slope(a, b) -> float:
    return (b[1] - a[1]) / max(b[0] - a[0], 1e-12)
