"""Graph cuts a module's Python code cannot follow: frozen when the plan is applied to a module.

The rewrite sets the bounds of a channel-axis Slice or Split to whatever the
plan keeps; the module's ``forward`` computes them itself: ``chunk(2)``
halves whatever width it gets (ShuffleNet), ``split([a, b])`` keeps its
literal sizes.  Either way the pruned module would read other channels
than the pruned graph, so the groups through a channel-axis Slice/Split
are frozen, unless *follows* says the module that made the node splits in proportion
(``chunk(3)`` of MaxViT's fused q, k, v, cut by whole heads alike).
"""
from __future__ import annotations

from typing import Callable, Optional

from ..analysis import DependencyAnalysis
from ..ir import node_label


def channel_slicing_groups(graph, analysis: DependencyAnalysis,
                           follows: Optional[Callable[[str], bool]] = None) -> dict[int, str]:
    """Group id -> reason, for every prunable group whose channels a Slice or Split cuts along its axis, except
    at nodes whose name *follows* accepts (the exporter's scope of a module that splits in proportion)."""
    prunable = {g.id for g in analysis.prunable_groups}
    reasons: dict[int, str] = {}
    for node in graph.nodes:
        if node.op == "Slice":
            axes = list(analysis.facts.slices.get(node.name, {}))
        elif node.op == "Split" and node.inputs and node.inputs[0].shape:
            axes = [int(node.attrs.get("axis", 0)) % len(node.inputs[0].shape)]
        else:
            continue
        if follows is not None and follows(node.name):
            continue
        for axis in axes:
            for tensor in [node.inputs[0], *node.outputs]:
                gid = analysis.group_of.get((tensor.name, axis))
                if gid in prunable and gid not in reasons:
                    reasons[gid] = (f"torch: {node_label(node)} cuts channels on axis {axis}; the module computes "
                                    "its own bounds (chunk/split)")
    return reasons
