"""The mask-equivalence oracle: the strongest check of analysis and rewrite together.

Zero the consumer-side slices (input channels of every boundary that reads
the group) of the atoms a plan removes, in the *original* model; then the
pruned model must compute the same outputs as this masked original, for any
weights and inputs, on every exact group.  No trained weights needed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from .analysis import CONSUMER
from .ir import constants_of, to_model
from .pipeline import Compiled, apply_plan, score_groups
from .plan import Plan, PlanOptions, make_plan
from .rewrite import kept_positions
from .runtime import random_inputs, session, tensor_outputs


def masked_consumers(analysis, plan: Plan, values: Callable[[str], np.ndarray]) -> dict[str, np.ndarray]:
    """New values of every consumer tensor the plan touches, its removed atoms' input slices zeroed.

    *values* gives a tensor's current values (the original, or OBSPA's compensated weights); the
    masked model computes what the pruned one does on every exact group, without a rewrite.
    """
    kept = kept_positions(analysis, plan)
    masked: dict[str, np.ndarray] = {}
    for gid in plan.removed:
        for param in analysis.groups[gid].params_by_role(CONSUMER):
            current = masked.get(param.tensor)
            array = np.array(values(param.tensor) if current is None else current, copy=True)
            gone = np.setdiff1d(np.arange(array.shape[param.axis]), kept[param.space])
            index = [slice(None)] * array.ndim
            index[param.axis] = gone
            array[tuple(index)] = 0
            masked[param.tensor] = array
    return masked


def masked_model(compiled: Compiled, plan: Plan) -> onnx.ModelProto:
    """The original model with the consumer-side slices of the removed atoms zeroed."""
    graph = compiled.graph.copy()
    constants = constants_of(graph)
    for name, values in masked_consumers(compiled.analysis, plan, lambda n: constants[n].values).items():
        constants[name].values = values
    return to_model(graph, compiled.meta)


@dataclass
class OracleResult:
    max_abs_error: float
    output_scale: float
    removed_atoms: int
    groups_pruned: int

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / max(self.output_scale, 1e-12)


def oracle_check(compiled: Compiled, ratio: float = 0.5, seed: int = 0, criterion: str = "random",
                 batch: int = 2, inexact: bool = False) -> OracleResult:
    """Prune exact groups (every group with *inexact*) at *ratio*; compare the pruned model with the masked original.

    Inexact groups (dynamic quantization ranges, normalization statistics)
    can only match to a tolerance the caller chooses.
    """
    exact = [g for g in compiled.analysis.prunable_groups if inexact or g.exact]
    scores = score_groups(compiled, criterion, seed=seed, groups=exact)
    plan = make_plan(compiled.analysis, scores, PlanOptions(ratio=ratio))
    plan.removed = {gid: atoms for gid, atoms in plan.removed.items() if gid in scores}
    pruned, _, _ = apply_plan(compiled, plan)
    masked = masked_model(compiled, plan)
    ref = session(masked)
    feeds = random_inputs(ref, batch=batch, seed=seed)
    names = tensor_outputs(ref)
    expected = ref.run(names, feeds)
    got = session(pruned).run(names, feeds)
    err = max(float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
              for a, b in zip(expected, got))
    scale = max(float(np.max(np.abs(a))) if a.size else 0.0 for a in expected)
    return OracleResult(err, scale, plan.n_removed, len(plan.removed))
