"""The op rule table: one entry per ONNX op, saying how channels flow through it.

A rule answers, for one node and one space on one of its tensors:
- which other spaces of the node are tied to it, and by which index map;
- which parameter slices go with it (producer, consumer or passive);
- whether the node is a *boundary* (Conv, Gemm, MatMul with a weight): it
  consumes one space and produces an unrelated one, so it ties nothing across;
- whether the space must be frozen (and why) or is only inexactly prunable.
It also rewrites the node's shape constants and attributes after pruning.

Ops missing from :data:`RULES` freeze every group they touch: unknown ops are
never guessed to be elementwise.
"""
from __future__ import annotations

from typing import Optional

import onnx_graphsurgeon as gs

from ..effects import NEUTRAL
from .base import Neutral, Rule
from .control_flow import CONTROL_FLOW_RULES
from .elementwise import Elementwise, GroupNorm, LayerNorm, Normalization, Pad, Pool, Reduce, Resize, Softmax
from .linear import Conv, ConvTranspose, Gemm, MatMul
from .quantized import QUANTIZED_CONTRIB_RULES, QUANTIZED_RULES
from .recurrent import MICROSOFT_RULES, RECURRENT_RULES
from .reshape import Reshape
from .shapes import Concat, Expand, Gather, Slice, Split, SqueezeLike, Tile, Transpose


class CastLike(Elementwise):
    """CastLike reads its second operand only for the dtype."""

    def __init__(self):
        super().__init__(data_inputs=1)

    def analyze(self, node, port, axis, cx):
        return NEUTRAL if port == ("in", 1) else super().analyze(node, port, axis, cx)


UNARY = ("Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
         "Celu", "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Neg",
         "Abs", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign", "ThresholdedRelu", "Swish", "Not",
         "IsNaN", "IsInf", "Cast", "Dropout", "Identity", "Shrink")
BINARY = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less",
          "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "BitShift")

RULES: dict[str, Rule] = {
    **{op: Elementwise() for op in BINARY},
    **{op: Elementwise(data_inputs=1) for op in UNARY},
    "PRelu": Elementwise(),
    "Clip": Elementwise(data_inputs=1),
    "CastLike": CastLike(),
    "BatchNormalization": Normalization(4),
    "InstanceNormalization": Normalization(2),
    "GroupNormalization": GroupNorm(),
    "Softmax": Softmax(), "LogSoftmax": Softmax(), "Hardmax": Softmax(),
    "Conv": Conv(),
    "ConvTranspose": ConvTranspose(),
    "Gemm": Gemm(),
    "MatMul": MatMul(),
    **{op: Pool() for op in ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
                             "GlobalLpPool")},
    "Resize": Resize(), "Upsample": Resize(),
    "Pad": Pad(),
    **{op: Reduce() for op in ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd",
                               "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                               "ReduceSumSquare", "ArgMax", "ArgMin")},
    "Transpose": Transpose(),
    "Squeeze": SqueezeLike(), "Unsqueeze": SqueezeLike(),
    "Reshape": Reshape(), "Flatten": Reshape(),
    "Concat": Concat(),
    "Split": Split(),
    "Slice": Slice(),
    "Shape": Neutral(), "Size": Neutral(),
    "LayerNormalization": LayerNorm(), "RMSNormalization": LayerNorm(),
    "Gather": Gather(),
    "Expand": Expand(),
    "Tile": Tile(),
    **RECURRENT_RULES,
    **QUANTIZED_RULES,
    **CONTROL_FLOW_RULES,
}

# Rules of ops outside the default domain, by domain (onnxruntime's contrib ops).
DOMAIN_RULES: dict[str, dict[str, Rule]] = {"com.microsoft": {**MICROSOFT_RULES, **QUANTIZED_CONTRIB_RULES}}


def rule_for(node: gs.Node) -> Optional[Rule]:
    """The rule of *node*'s op; None freezes (unknown ops and custom domains without rules)."""
    if node.domain not in (None, "", "ai.onnx"):
        return DOMAIN_RULES.get(node.domain, {}).get(node.op)
    return RULES.get(node.op)
