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
- OBSPA on ``MatMulInteger`` (after ``DynamicQuantizeLinear``, as onnxruntime's
  dynamic quantizer writes it): statistics of the float activation before its
  quantization, costs on ``B - b_zero_point`` (rows weighted by a per-column
  ``b_scale`` where the dequantizing ``Mul`` shows one; a per-tensor scale
  cancels in OBS's energy-normalized costs), and compensated weights put back
  on ``B``'s integer grid with the same zero point (rounded, clipped to the
  type's range): :func:`requantize`.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import attr, const_shape, dequantized_constant, input_at, normalize_axes
from ..effects import PASSIVE, PRODUCER, Effect, ParamSlice, frozen
from .base import Rule, axis_tie, param, space_of
from .elementwise import Elementwise, Pool
from .linear import Conv, Gemm, MatMul


def _per_axis(tensor) -> bool:
    """A scale or zero point with more than one entry (per-axis quantization)."""
    shape = const_shape(tensor)
    return shape is not None and int(np.prod(shape)) > 1


def scale_slices(node: gs.Node, indices: tuple[int, ...], effect: Effect, channels: int) -> None:
    """Add per-channel scales and zero points (1-D, one entry per output channel) to *effect*'s producer side."""
    producers = [p for p in effect.params if p.role == PRODUCER and p.input_index not in indices]
    if not producers:
        return
    for index in indices:
        shape = const_shape(input_at(node, index))
        if shape is not None and len(shape) == 1 and shape[0] == channels > 1:
            effect.params.append(param(node, index, 0, PRODUCER, producers[0].space))


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


def integer_range(dtype) -> tuple[int, int]:
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


def requantize(w: np.ndarray, zero: np.ndarray, dtype) -> np.ndarray:
    """Float weights in zero-point space (``q - zero``) back on the integer grid: rounded, clipped to *dtype*."""
    low, high = integer_range(dtype)
    return np.clip(np.rint(w) + zero, low, high) - zero


def _constant_values(tensor) -> Optional[np.ndarray]:
    return np.asarray(tensor.values) if isinstance(tensor, gs.Constant) else None


class MatMulInteger(MatMul):
    """``(A - a_zero_point) @ (B - b_zero_point)`` with a constant 2-D ``B``: a boundary like MatMul."""

    def is_consumer_layer(self, node):
        """OBSPA handles it where A is a DynamicQuantizeLinear of a float activation (statistics on that)."""
        a = node.inputs[0]
        return self._supported(node) is None and len(a.inputs) == 1 and a.inputs[0].op == "DynamicQuantizeLinear" \
            and isinstance(node.inputs[1], gs.Constant)

    def statistics_input(self, node):
        return node.inputs[0].inputs[0].inputs[0]

    def _zero(self, node) -> np.ndarray:
        zero = input_at(node, 3)
        return np.zeros(1) if zero is None else np.asarray(zero.values, dtype=np.float64).reshape(-1)

    def _row_scale(self, node, columns: int) -> np.ndarray:
        """B's per-column scale from the dequantizing ``Cast -> Mul(a_scale * b_scale)``, else ones."""
        readers = node.outputs[0].outputs
        cast = readers[0] if len(readers) == 1 and readers[0].op == "Cast" else None
        mul = cast.outputs[0].outputs[0] if cast is not None and len(cast.outputs[0].outputs) == 1 else None
        if mul is None or mul.op != "Mul":
            return np.ones(columns)
        for factor in mul.inputs:
            producer = factor.inputs[0] if not isinstance(factor, gs.Constant) and len(factor.inputs) == 1 else None
            if producer is not None and producer.op == "Mul":
                for operand in producer.inputs:
                    values = _constant_values(operand)
                    if values is not None and values.size == columns and np.all(values > 0):
                        return values.astype(np.float64).reshape(-1)
        return np.ones(columns)

    def weight_matrix(self, node, axis, values):
        if axis != 0 or values.ndim != 2:
            return None
        w = (np.asarray(values, dtype=np.float64) - self._zero(node)[None, :]).T  # (out, in)
        return w * self._row_scale(node, w.shape[0])[:, None], 1

    def representable(self, node, param, w):
        scale = self._row_scale(node, w.shape[0])[:, None]
        zero = np.broadcast_to(self._zero(node), (w.shape[0],))[:, None]
        return requantize(w / scale, zero, node.inputs[1].values.dtype) * scale

    def weight_values(self, node, param, w, shape):
        zero = np.broadcast_to(self._zero(node), (w.shape[0],))[:, None]
        q = np.rint(self.representable(node, param, w) / self._row_scale(node, w.shape[0])[:, None]) + zero
        return q.T.reshape(shape).astype(node.inputs[1].values.dtype)

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
        scale_slices(node, (3,), effect, const_shape(node.inputs[1])[1])
        return effect


class QLinearConv(Conv):
    """QLinearConv (x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, B): a Conv between fixed-scale
    quantized tensors (exact); per-channel w_scale and w_zero_point go with the output channels."""

    macs = Rule.macs  # the cost model does not count it
    is_consumer_layer = Rule.is_consumer_layer  # OBSPA leaves it alone

    WEIGHT, BIAS = 3, 8

    def analyze(self, node, port, axis, cx):
        effect = super().analyze(node, port, axis, cx)
        w = self._weight(node)
        if w is not None:
            scale_slices(node, (4, 5), effect, w[0])
        return effect


class ConvInteger(Conv):
    """ConvInteger (x, w, x_zero_point, w_zero_point): Conv on integers, after a DynamicQuantizeLinear;
    a per-channel w_zero_point goes with the output channels.  OBSPA: as MatMulInteger (statistics before
    the quantization, compensation back on w's grid with its zero point; per-tensor scale assumed)."""

    macs = Rule.macs  # the cost model does not count it

    WEIGHT, BIAS = 1, None

    def is_consumer_layer(self, node):
        x = node.inputs[0]
        zero = input_at(node, 3)
        return len(x.inputs) == 1 and x.inputs[0].op == "DynamicQuantizeLinear" and isinstance(node.inputs[1], gs.Constant) \
            and (zero is None or isinstance(zero, gs.Constant)) and int(attr(node, "group", 1)) == 1

    def statistics_input(self, node):
        return node.inputs[0].inputs[0].inputs[0]

    def _zero(self, node, out: int) -> np.ndarray:
        zero = input_at(node, 3)
        values = np.zeros(1) if zero is None else np.asarray(zero.values, dtype=np.float64).reshape(-1)
        return np.broadcast_to(values, (out,))[:, None]

    def weight_matrix(self, node, axis, values):
        view = super().weight_matrix(node, axis, np.asarray(values, dtype=np.float64))
        if view is None:
            return None
        w, k = view
        return w - self._zero(node, w.shape[0]), k

    def representable(self, node, param, w):
        return requantize(w, self._zero(node, w.shape[0]), node.inputs[1].values.dtype)

    def weight_values(self, node, param, w, shape):
        q = np.rint(self.representable(node, param, w) + self._zero(node, w.shape[0]))
        return q.reshape(shape).astype(node.inputs[1].values.dtype)

    def analyze(self, node, port, axis, cx):
        zero = input_at(node, 2)
        if zero is not None and zero.shape is not None and int(np.prod(zero.shape or [1])) > 1:
            return frozen(f"{node.name} ({node.op}) x has per-channel zero points")
        effect = super().analyze(node, port, axis, cx)
        w = self._weight(node)
        if w is not None:
            scale_slices(node, (3,), effect, w[0])
        return effect


class QLinearMatMul(MatMul):
    """QLinearMatMul (a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp) with a constant 2-D b."""

    macs = Rule.macs  # the cost model does not count it
    is_consumer_layer = Rule.is_consumer_layer  # OBSPA leaves it alone

    def _b(self, node):
        shape = const_shape(input_at(node, 3))
        return shape if shape is not None and len(shape) == 2 and const_shape(node.inputs[0]) is None else None

    def seeds(self, node, cx):
        rank = cx.rank(node.outputs[0])
        return [space_of(node.outputs[0], rank - 1)] if self._b(node) is not None and rank and rank >= 2 else []

    def analyze(self, node, port, axis, cx):
        b = self._b(node)
        if b is None:
            return frozen(f"{node.name} ({node.op}) needs an activation a and a constant 2-D b")
        effect = self._with_weight(node, port, axis, cx, data=0, contract=-1, weight=3)
        scale_slices(node, (4, 5), effect, b[1])
        return effect


class QGemm(Gemm):
    """onnxruntime's QGemm (A, a_scale, a_zp, B, b_scale, b_zp, C, y_scale, y_zp): Gemm with fixed scales."""

    macs = Rule.macs  # the cost model does not count it
    is_consumer_layer = Rule.is_consumer_layer  # OBSPA leaves it alone

    WEIGHT, BIAS = 3, 6

    def analyze(self, node, port, axis, cx):
        effect = super().analyze(node, port, axis, cx)
        b = const_shape(node.inputs[self.WEIGHT])
        if b is not None:
            scale_slices(node, (4, 5), effect, b[0] if attr(node, "transB", 0) else b[1])
        return effect


class QLinearBinary(Elementwise):
    """onnxruntime's QLinearAdd / QLinearMul (A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp)."""

    def operands(self, node):
        return [(0, node.inputs[0]), (3, node.inputs[3])]


QUANTIZED_RULES = {
    "QuantizeLinear": QuantizeDequantize(),
    "DequantizeLinear": QuantizeDequantize(),
    "DynamicQuantizeLinear": DynamicQuantizeLinear(),
    "MatMulInteger": MatMulInteger(),
    "QLinearConv": QLinearConv(),
    "ConvInteger": ConvInteger(),
    "QLinearMatMul": QLinearMatMul(),
}

# onnxruntime's QOperator contrib ops (domain com.microsoft)
QUANTIZED_CONTRIB_RULES = {
    "QGemm": QGemm(),
    "QLinearAdd": QLinearBinary(),
    "QLinearMul": QLinearBinary(),
    "QLinearGlobalAveragePool": Pool(),
    "QLinearAveragePool": Pool(),
    "QLinearSigmoid": Elementwise(data_inputs=1),
    "QLinearLeakyRelu": Elementwise(data_inputs=1),
}
