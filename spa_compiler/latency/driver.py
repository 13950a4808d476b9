"""The latency share of ``prune_with``: plan for a latency target, measure the result, report it.

Kept apart from the driver so ``api.py`` only asks three things: a first
plan, whether a written model calls for another (measured after
verification), and what goes into the report and warnings.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

from ..plan import Plan
from .speed import Measured, SpeedTarget, measure_pair, slower_line, speed_report, time_dense


class SpeedCheck:
    """Dense-vs-pruned measurement of one prune call, with an optional latency target.

    Without a target (``--check-speed``) it only measures and, when the
    pruned model is slower than the original, says so with the fix.
    """

    def __init__(self, opts, compiled, dense_source, say: Callable[[str], None] = lambda _m: None) -> None:
        from .providers import providers_for

        self.opts, self.compiled, self.dense_source, self.say = opts, compiled, dense_source, say
        self.providers = providers_for(opts.provider)
        self.target: Optional[SpeedTarget] = None
        self.measured: Optional[Measured] = None
        self.tables: dict = {}
        self.out_of_reach: Optional[str] = None

    def plan_for_target(self, scores, plan_options, measurement=None, updates_for=None) -> Plan:
        """The first plan for the target (tables measured where the cache lacks them).

        With *measurement* (the measurement inputs), the latency plan is measured against a uniform plan
        at the same predicted latency (:mod:`.choice`); *updates_for* compensates a plan as it will be
        written (OBSPA).
        """
        from .choice import PlanChoice
        from .layers import timed_layers
        from .planner import LatencyModel, LatencyPlanner
        from .table import open_table

        opts, compiled = self.opts, self.compiled
        table = open_table(self.providers[0], opts.threads)
        layers = timed_layers(compiled.graph, compiled.analysis, compiled.spec)
        self.say(f"latency tables: {len(layers)} layers on {self.providers[0]} ({table.path})")
        dense_ms = time_dense(self.dense_source, self.providers, opts.threads, compiled.spec)
        model = LatencyModel(layers, table, compiled.analysis, dense_ms)
        table.save()
        steps = {kind if dtype == "float32" else f"{kind}:{dtype}": table.step(kind, dtype)
                 for kind, dtype in sorted({(layer.kind, layer.dtype) for layer in layers})}

        def planner(scaling: Optional[str] = None) -> LatencyPlanner:
            options = replace(plan_options, score_scaling=scaling) if scaling else plan_options
            return LatencyPlanner(compiled.analysis, scores, options, model, table)

        reachable = dense_ms / max(planner().floor_ms(), 1e-9)
        self.tables = {"cache": str(table.path) if table.path else None, "layers": len(layers),
                       "signatures": len({layer.signature for layer in layers}), "timed_now": table.measured,
                       "steps": steps, "reachable_speedup": reachable}
        judge = _judge(compiled, scores, plan_options, measurement, updates_for) if measurement is not None else None
        choice = PlanChoice(planner, judge)
        self.target = SpeedTarget(lambda: choice, dense_ms, opts.target_speedup, opts.target_latency)
        self.say(f"planning for {self._asked()} (dense {dense_ms:.3f} ms)")
        self.out_of_reach = reachable_line(self.target.fraction, reachable, model)
        if self.out_of_reach:
            self.say(self.out_of_reach)
        return self.target.plan()

    def _asked(self) -> str:
        if self.opts.target_speedup:
            return f"{self.opts.target_speedup:g}x speedup"
        return f"{self.opts.target_latency:g} ms"

    def after(self, pruned, plan: Plan) -> Optional[Plan]:
        """Measure the written/verified *pruned* model; a tighter plan when a target is missed."""
        self.say(f"benchmarking dense and pruned on {self.providers[0]}")
        self.measured = measure_pair(self.dense_source, pruned, self.providers, self.opts.threads,
                                     self.compiled.spec)
        if self.target is None:
            return None
        tighter = self.target.after(self.measured, plan)
        if tighter is not None:
            self.say(f"measured {1 / self.measured.ratio:.2f}x, short of {self._asked()}: planning tighter")
        return tighter

    def report(self) -> tuple[dict, list[str]]:
        """The report's ``speed`` entry and the warning lines."""
        if self.measured is None:
            return {}, []
        entry = speed_report(self.measured, self.opts.threads, self.compiled.spec)
        lines = []
        if self.target is not None:
            entry.update(self.target.report(self.measured), tables=self.tables)
            lines += [self.out_of_reach, self.target.missed_line(self.measured)]
        else:
            lines.append(slower_line(self.measured, self.opts.round_to))
        return entry, [line for line in lines if line]


def reachable_line(fraction: float, reachable: float, model) -> Optional[str]:
    """The Amdahl line when the asked fraction of dense latency is below what pruning every group can reach."""
    if fraction * reachable >= 1.0:
        return None
    share = 1.0 - model.rest / max(model.dense_ms, 1e-9)
    return (f"at most {reachable:.2f}x is reachable by pruning (predicted with every group at its --max-group-ratio "
            f"cap; the timed prunable layers are {share:.0%} of the dense latency)")


def _judge(compiled, scores, plan_options, measurement, updates_for) -> Callable:
    """Output fidelity of a plan on the measurement inputs, as ranking.py measures its candidates."""
    from ..budget import MaxErrorSearch

    search = MaxErrorSearch(compiled, scores, replace(plan_options, global_ranking=False), measurement,
                            float("inf"), None, updates_for or (lambda _plan: None))
    return search.fidelity
