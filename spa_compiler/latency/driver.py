"""The latency share of ``prune_with``: plan for a latency target, measure the result, report it.

Kept apart from the driver so ``api.py`` only asks three things: a first
plan, whether a written model calls for another (measured after
verification), and what goes into the report and warnings.
"""
from __future__ import annotations

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

    def plan_for_target(self, scores, plan_options) -> Plan:
        """The latency planner's first plan (tables measured where the cache lacks them)."""
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
        self.tables = {"cache": str(table.path) if table.path else None, "layers": len(layers),
                       "signatures": len({layer.signature for layer in layers}), "timed_now": table.measured,
                       "steps": steps}
        self.target = SpeedTarget(lambda: LatencyPlanner(compiled.analysis, scores, plan_options, model, table),
                                  dense_ms, opts.target_speedup, opts.target_latency)
        self.say(f"planning for {self._asked()} (dense {dense_ms:.3f} ms)")
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
            lines.append(self.target.missed_line(self.measured))
        else:
            lines.append(slower_line(self.measured, self.opts.round_to))
        return entry, [line for line in lines if line]
