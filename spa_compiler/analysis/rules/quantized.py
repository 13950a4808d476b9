"""Quantized graphs: (de)quantization of activations and integer matrix products.

- ``QuantizeLinear`` / ``DequantizeLinear`` on an activation are elementwise
  affine maps: per-tensor scales tie nothing, per-axis scales and zero
  points (``axis`` attribute) are per-channel parameters of that axis.
- ``DynamicQuantizeLinear`` quantizes with a scale computed from the whole
  tensor's min and max: removing channels can move that range, so the groups
  it sees are inexact (still prunable).
- A weight that is ``DequantizeLinear(initializer)`` (QDQ models) counts as a
  constant for every rule (:func:`~spa_compiler.ir.const_shape` sees through
  it); :func:`through_dequantize` moves its slices onto the quantized
  initializer, with per-axis scales and zero points when they run along the
  sliced axis.  Zeroing quantized rows is exact for zero-point-0 weights.
- ``MatMulInteger`` with a constant ``B`` is a boundary like MatMul; a
  per-column ``b_zero_point`` goes with ``B``'s output columns.  Its oracle
  masking zeroes ``B``'s input rows, which is exact for symmetric
  (zero-point 0) weights, what onnxruntime's quantizer writes.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import attr, const_shape, dequantized_constant, input_at, normalize_axes
from ..effects import PASSIVE, PRODUCER, ParamSlice, frozen
from .base import Rule, axis_tie, param, space_of
from .linear import MatMul


def _per_axis(tensor) -> bool:
    """A scale or zero point with more than one entry (per-axis quantization)."""
    shape = const_shape(tensor)
    return shape is not None and int(np.prod(shape)) > 1


def through_dequantize(p: ParamSlice, tensors: dict) -> list[ParamSlice]:
    """*p* itself, or, on a dequantized weight, its slice of the quantized initializer plus the per-axis
    scale and zero point when they run along the sliced axis (per-tensor ones stay whole)."""
    quantized = dequantized_constant(tensors.get(p.tensor))
    if quantized is None:
        return [p]
    dequantize = tensors[p.tensor].inputs[0]
    out = [replace(p, tensor=quantized.name)]
    axis = normalize_axes([int(attr(dequantize, "axis", 1))], len(quantized.shape))[0]
    for tensor in dequantize.inputs[1:]:
        if tensor is not None and tensor.name and _per_axis(tensor) and axis == p.axis:
            out.append(replace(p, tensor=tensor.name, axis=0, role=PASSIVE))
    return out


class QuantizeDequantize(Rule):
    """QuantizeLinear / DequantizeLinear of an activation: identity on every axis, per-axis parameters."""

    def analyze(self, node, port, axis, cx):
        x = node.inputs[0]
        if isinstance(x, gs.Constant):
            return frozen(f"{node.name} ({node.op}) dequantizes a constant (QDQ weight) has no rule yet")
        if port[0] == "in" and port[1] != 0:
            return frozen(f"{node.name} ({node.op}) scale or zero point computed at run time")
        if int(attr(node, "block_size", 0)):
            return frozen(f"{node.name} ({node.op}) blocked quantization")
        effect = axis_tie(node, axis, axis, cx)
        scale, zero = input_at(node, 1), input_at(node, 2)
        if not (_per_axis(scale) or _per_axis(zero)):
            return effect
        rank = cx.rank(x)
        if rank is None:
            return frozen(f"{node.name} ({node.op}) rank unknown")
        if normalize_axes([int(attr(node, "axis", 1))], rank)[0] != axis:
            return effect
        for index, tensor in ((1, scale), (2, zero)):
            if tensor is None:
                continue
            if not isinstance(tensor, gs.Constant):
                return frozen(f"{node.name} ({node.op}) per-axis parameters computed at run time")
            effect.params.append(param(node, index, 0, PASSIVE, space_of(node.outputs[0], axis)))
        return effect


class DynamicQuantizeLinear(Rule):
    """Quantize with a range read from the whole tensor: identity on channels, inexact."""

    def analyze(self, node, port, axis, cx):
        if port[0] == "out" and port[1] != 0:
            return frozen(f"{node.name} ({node.op}) scale or zero point reached")
        effect = axis_tie(node, axis, axis, cx)
        if not effect.freeze:
            effect.inexact = (f"{node.name} ({node.op}) takes its scale from the min and max of the whole tensor "
                              f"(removed channels can move them)")
        return effect


class MatMulInteger(MatMul):
    """``(A - a_zero_point) @ (B - b_zero_point)`` with a constant 2-D ``B``: a boundary like MatMul."""

    def seeds(self, node, cx):
        return super().seeds(node, cx) if self._supported(node) is None else []

    def _supported(self, node):
        if const_shape(node.inputs[0]) is not None or const_shape(node.inputs[1]) is None:
            return "needs an activation A and a constant B"
        if len(const_shape(node.inputs[1])) != 2:
            return "B is not 2-D"
        a_zero = input_at(node, 2)
        if a_zero is not None and a_zero.shape is not None and int(np.prod(a_zero.shape or [1])) > 1:
            return "A has per-row zero points"
        b_zero = input_at(node, 3)
        if b_zero is not None and not isinstance(b_zero, gs.Constant):
            return "B's zero point is computed at run time"
        return None

    def analyze(self, node, port, axis, cx):
        problem = self._supported(node)
        if problem:
            return frozen(f"{node.name} ({node.op}) {problem}")
        if port[0] == "in" and port[1] >= 2:
            return frozen(f"{node.name} ({node.op}) zero point reached")
        effect = self._with_weight(node, port, axis, cx, data=0, contract=-1)
        b_zero = input_at(node, 3)
        if port[0] == "out" and _per_axis(b_zero) and any(p.role == PRODUCER for p in effect.params):
            effect.params.append(param(node, 3, 0, PRODUCER, space_of(node.outputs[0], axis)))
        return effect


QUANTIZED_RULES = {
    "QuantizeLinear": QuantizeDequantize(),
    "DequantizeLinear": QuantizeDequantize(),
    "DynamicQuantizeLinear": DynamicQuantizeLinear(),
    "MatMulInteger": MatMulInteger(),
}
