"""The rewrite transform: physically remove the planned atoms.

Slices every parameter slice of every changed space, lets each touched node's
rule fix its attributes and shape constants (group counts, Reshape targets,
Split sizes, Slice bounds), then re-infers shapes.  It invalidates every
analysis: the returned graph must be analysed afresh.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from .analysis import DependencyAnalysis, Space
from .analysis.context import RewriteContext
from .analysis.rules import rule_for
from .errors import CompileError
from .ir import ModelMeta, all_nodes, constants_of, copy_base, node_label
from .shapes import reinfer_shapes
from .plan import Plan
from .weights import release_pages


@dataclass
class RewriteLog:
    """What the rewrite changed, for the report."""

    initializers: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)
    edits: list[str] = field(default_factory=list)


def kept_positions(analysis: DependencyAnalysis, plan: Plan) -> dict[Space, np.ndarray]:
    """Kept positions of every space in every group the plan touches."""
    kept: dict[Space, np.ndarray] = {}
    for gid, removed in plan.removed.items():
        group = analysis.groups[gid]
        gone = np.zeros(group.n_atoms, dtype=bool)
        gone[removed] = True
        for space in group.spaces:
            kept[space] = np.flatnonzero(~gone[group.atom_of[space]])
    return kept


def kept_fraction(analysis: DependencyAnalysis, plan: Plan):
    """A function (tensor, axis) -> kept fraction (None when untouched), for the cost model."""
    fractions = {space: len(kept) / analysis.groups[analysis.group_of[space]].sizes[space]
                 for space, kept in kept_positions(analysis, plan).items()
                 if analysis.groups[analysis.group_of[space]].sizes[space]}
    return lambda name, axis: fractions.get((name, axis))


def reshare_copies(graph: gs.Graph) -> int:
    """Point the per-use copies of a shared weight (``unshare_initializers``) back at it where they are
    still equal: an unrolled cell or a TimeDistributed layer keeps one weight, not one per step.

    Only weights the main graph reads are shared back (a subgraph may read the outer scope, not the
    reverse); returns the count.
    """
    main = {t.name: t for node in graph.nodes for t in node.inputs if isinstance(t, gs.Constant)}
    count = 0
    for node in all_nodes(graph):
        for i, tensor in enumerate(node.inputs):
            base = main.get(copy_base(tensor.name) or "") if isinstance(tensor, gs.Constant) else None
            if base is None or base is tensor or tuple(base.shape) != tuple(tensor.shape):
                continue
            if np.asarray(base.values).dtype == np.asarray(tensor.values).dtype \
                    and np.array_equal(np.asarray(base.values), np.asarray(tensor.values)):
                node.inputs[i] = base
                count += 1
    return count


def rewrite(graph: gs.Graph, meta: ModelMeta, analysis: DependencyAnalysis, plan: Plan,
            updates: Optional[dict[str, np.ndarray]] = None) -> tuple[gs.Graph, RewriteLog]:
    """Return a pruned copy of *graph* (the input graph is left untouched).

    *updates* replaces constants by name before slicing: the weight
    compensation and normalization folds computed by OBSPA.
    """
    work = graph.copy()
    kept = kept_positions(analysis, plan)
    log = RewriteLog()
    constants = constants_of(work)
    for name, values in (updates or {}).items():
        if name not in constants:
            raise CompileError(f"compensated parameter {name} not found")
        constants[name].values = np.asarray(values, dtype=np.asarray(constants[name].values).dtype)
    for gid in plan.removed:
        for param in analysis.groups[gid].params:
            const = constants.get(param.tensor)
            if const is None:
                raise CompileError(f"parameter {param.tensor} of {param.node} ({param.op}) not found")
            before = list(const.shape)
            values = np.asarray(const.values)
            if values.shape[param.axis] != analysis.groups[gid].sizes[param.space]:
                raise CompileError(f"{param.node} ({param.op}): {param.tensor} axis {param.axis} has "
                                   f"{values.shape[param.axis]} entries, expected {analysis.groups[gid].sizes[param.space]}")
            const.values = np.take(values, kept[param.space], axis=param.axis)
            first = log.initializers.get(param.tensor, (before, None))[0]
            log.initializers[param.tensor] = (first, list(const.shape))
        release_pages()  # the kept slices are new arrays; the mapped originals need not stay resident
    rx = RewriteContext(graph=work, facts=analysis.facts, kept_of=lambda name, axis: kept.get((name, axis)))
    touched_tensors = {name for name, _ in kept}
    for node in all_nodes(work):
        names = {t.name for t in node.inputs if t is not None} | {t.name for t in node.outputs}
        if not names & touched_tensors:
            continue
        rule = rule_for(node)
        if rule is None:
            continue
        try:
            rule.rewrite(node, rx)
        except Exception as exc:  # noqa: BLE001
            raise CompileError(f"rewrite of {node_label(node)} failed: {exc}") from exc
    log.edits = rx.changed
    reshare_copies(work)
    work.cleanup()
    return reinfer_shapes(work, meta), log
