"""Rule base class and the helpers every rule uses."""
from __future__ import annotations

from typing import Callable, Optional

import onnx_graphsurgeon as gs

from ..context import AnalysisContext, RewriteContext
from ..effects import NEUTRAL, Effect, ParamSlice, Space, Tie, frozen
from ..maps import identity

Port = tuple[str, int]  # ("in", i) or ("out", i)
ShapeOf = Callable[[gs.Tensor], Optional[list[Optional[int]]]]  # a tensor's dims (None: unknown) or None


def space_of(tensor: gs.Tensor, axis: int) -> Space:
    return (tensor.name, axis)


def axis_tie(node: gs.Node, in_axis: int, out_axis: int, cx: AnalysisContext) -> Effect:
    """Identity tie between axis *in_axis* of the data input and *out_axis* of the output."""
    size = cx.dim(node.outputs[0], out_axis)
    if size is None:
        return frozen(f"{node.name} ({node.op}) size of axis {out_axis} unknown")
    return Effect(ties=[Tie(space_of(node.inputs[0], in_axis), space_of(node.outputs[0], out_axis), identity(size))])


def param(node: gs.Node, index: int, axis: int, role: str, space: Space) -> ParamSlice:
    return ParamSlice(space=space, tensor=node.inputs[index].name, axis=axis, role=role,
                      node=node.name, op=node.op, input_index=index)


class Rule:
    """Base rule; subclasses override what applies to them."""

    exact = True

    def seeds(self, node: gs.Node, cx: AnalysisContext) -> list[Space]:
        """Spaces this node creates from nothing (boundary outputs)."""
        return []

    def analyze(self, node: gs.Node, port: Port, axis: int, cx: AnalysisContext) -> Effect:
        raise NotImplementedError

    def rewrite(self, node: gs.Node, rx: RewriteContext) -> None:
        """Fix attributes and shape constants after the node's spaces shrank."""

    def is_consumer_layer(self, node: gs.Node) -> bool:
        """Whether OBSPA compensates the node: a weight matrix over feature rows it can read (Conv, Gemm,
        MatMul; see :class:`~spa_compiler.analysis.rules.linear.Compensable`)."""
        return False

    def macs(self, node: gs.Node, shape_of: ShapeOf) -> int:
        """Multiply-accumulates of one node, with *shape_of* giving its tensors' dims: 0 when the cost model
        does not count the op."""
        return 0


class Neutral(Rule):
    """Reads only the shape of its input (Shape, Size): no tie, nothing to freeze."""

    def analyze(self, node, port, axis, cx):
        return NEUTRAL
