"""Cost model: parameters and multiply-accumulates, per layer and in total.

Counted from shapes (symbolic dims count as 1), so it works without running
the model; ``estimate`` predicts the cost of a plan from kept-channel
fractions, which lets the planner meet a MACs target without rewriting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import onnx_graphsurgeon as gs

from .ir import static_shape

# gate blocks per hidden unit of the recurrent ops
RECURRENT_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1, "DynamicQuantizeLSTM": 4}
COUNTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "MatMulInteger", *RECURRENT_GATES)
# constants that count as parameters: float weights and int8/uint8 quantized weights (not int64 shapes)
WEIGHT_KINDS = (np.floating, np.int8, np.uint8)


@dataclass
class LayerCost:
    name: str
    op: str
    params: int
    macs: int


def _prod(dims) -> int:
    return int(np.prod([d if d is not None else 1 for d in dims], dtype=np.int64))


def node_macs(node: gs.Node) -> int:
    """MACs of one node (0 for ops the model does not count)."""
    if node.op not in COUNTED_OPS:
        return 0
    if node.op in RECURRENT_GATES:
        return sum(recurrent_macs(node))
    out = static_shape(node.outputs[0])
    x = static_shape(node.inputs[0])
    w = node.inputs[1].shape if len(node.inputs) > 1 and node.inputs[1].shape is not None else None
    if out is None or w is None:
        return 0
    w = [d if isinstance(d, (int, np.integer)) else 1 for d in w]
    if node.op == "Conv":
        return _prod(out[:1]) * _prod(out[1:]) * _prod(w[1:])
    if node.op == "ConvTranspose":
        return 0 if x is None else _prod(x) * _prod(w[1:])
    if node.op == "Gemm":
        k = x[0] if node.attrs.get("transA", 0) and x else (x[-1] if x else 1)
        return _prod(out) * (k or 1)
    if node.op in ("MatMul", "MatMulInteger"):
        return 0 if x is None else _prod(out) * (x[-1] or 1)
    return 0


def recurrent_macs(node: gs.Node) -> tuple[int, int]:
    """(input part, recurrent part) of a recurrent layer's MACs: gates*hidden*(input + hidden) per step."""
    x = static_shape(node.inputs[0])
    w = node.inputs[1].shape if len(node.inputs) > 1 else None
    hidden = int(node.attrs.get("hidden_size", 0))
    if x is None or w is None or not hidden:
        return 0, 0
    steps = _prod(x[:-1]) * int(w[0])  # time steps x batch rows x directions
    gates = RECURRENT_GATES[node.op] * hidden
    return steps * gates * (x[-1] or 1), steps * gates * hidden


def node_params(node: gs.Node) -> int:
    return sum(int(np.prod(t.shape)) for t in node.inputs if isinstance(t, gs.Constant) and _is_weight(t))


def layer_costs(graph: gs.Graph) -> list[LayerCost]:
    return [LayerCost(n.name, n.op, node_params(n), node_macs(n)) for n in graph.nodes]


def totals(graph: gs.Graph) -> tuple[int, int]:
    """(params, MACs) of the whole graph; each constant counted once."""
    params = sum(int(np.prod(t.shape)) for t in graph.tensors().values()
                 if isinstance(t, gs.Constant) and t.outputs and _is_weight(t))
    macs = sum(node_macs(n) for n in graph.nodes)
    return params, macs


def _is_weight(t: gs.Constant) -> bool:
    dtype = getattr(t._values, "dtype", None)  # avoid loading lazy values just to read the dtype
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        dtype = t.values.dtype
    return any(np.issubdtype(dtype, kind) for kind in WEIGHT_KINDS)


def estimate_macs(graph: gs.Graph, fraction: Callable[[str, int], Optional[float]]) -> int:
    """MACs after pruning, given the kept fraction of each (tensor, axis) space (None = untouched)."""
    total = 0
    for node in graph.nodes:
        macs = node_macs(node)
        if not macs:
            continue
        out, x = node.outputs[0], node.inputs[0]
        if node.op in RECURRENT_GATES:
            total += _recurrent_estimate(node, fraction)
            continue
        if node.op in ("Conv", "ConvTranspose", "Gemm"):
            f_out = fraction(out.name, 1)
            f_in = fraction(x.name, 1) if int(node.attrs.get("group", 1)) == 1 else None
        else:  # MatMul: every output axis may shrink (heads are a batch axis of attention's products)
            rank = len(out.shape or [])
            kept = [fraction(out.name, axis) for axis in range(rank)]
            f_out = float(np.prod([1.0 if f is None else f for f in kept]))
            f_in = fraction(x.name, len(x.shape or [None]) - 1)
        total += macs * (1.0 if f_out is None else f_out) * (1.0 if f_in is None else f_in)
    return int(total)


def _recurrent_estimate(node: gs.Node, fraction: Callable[[str, int], Optional[float]]) -> float:
    """A recurrent layer's MACs after pruning: input part scales with hidden x input, recurrence with hidden^2."""
    inputs, recurrence = recurrent_macs(node)
    y = next((t for t in node.outputs if t.name and t.shape is not None), None)
    f_h = fraction(y.name, len(y.shape) - 1) if y is not None else None
    f_in = fraction(node.inputs[0].name, len(node.inputs[0].shape or [None]) - 1)
    f_h = 1.0 if f_h is None else f_h
    return inputs * f_h * (1.0 if f_in is None else f_in) + recurrence * f_h * f_h
