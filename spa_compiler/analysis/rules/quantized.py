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
- ``MatMulNBits`` (block-wise 4-bit weights): whole output rows, and input
  features in whole quantization blocks (see :class:`MatMulNBits`).
- ``QLinearConcat``: a Concat of fixed-scale tensors (exact).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import attr, const_shape, const_values, dequantized_constant, dims_product, input_at, normalize_axes
from ..effects import CONSUMER, PASSIVE, PRODUCER, Effect, ParamSlice, Tie, frozen
from ..maps import Block, identity
from .base import Rule, axis_tie, param, space_of
from .elementwise import Elementwise, Pool
from .linear import Conv, Gemm, MatMul
from .shapes import Concat


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


class QLinearConcat(Concat):
    """onnxruntime's QLinearConcat (Y_scale, Y_zero_point, then X_i, X_i_scale, X_i_zero_point per input)."""

    def data(self, node):
        return list(node.inputs[2::3])


def unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    """4-bit codes packed two per byte along the last axis (low nibble first), the first *count* of them."""
    codes = np.stack([packed & 15, packed >> 4], axis=-1).reshape(packed.shape[:-1] + (-1,))
    return codes[..., :count].astype(np.uint8)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """The inverse of :func:`unpack_nibbles` (an odd count padded with a zero code)."""
    codes = np.asarray(codes, np.uint8)
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros(codes.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


class MatMulNBits(Rule):
    """onnxruntime's MatMulNBits (A, B, scales, zero_points, g_idx, bias; attributes K, N, bits, block_size).

    ``B`` is ``[N, k_blocks, blob]``: row ``n`` holds output feature ``n``'s weights, block ``j`` input
    features ``j*block_size ...``, packed ``bits`` per code.  An output feature is a row of ``B``, of the
    scales and zero points (made ``[N, k_blocks]`` by the ``matmul_nbits_2d_scales`` normalization) and of
    the bias; input features go in whole blocks (a block map ties block ``j`` of ``B``'s axis 1 to its
    ``block_size`` features), with the block's scales (a consumer slice: the oracle zeroes the scales, so
    the masked weight is exactly 0 for any zero point).  Packed 4-bit zero points are re-packed by the
    rewrite; ``N`` and ``K`` are rewritten.
    """

    B, SCALES, ZERO_POINTS, G_IDX, BIAS = 1, 2, 3, 4, 5

    def _problem(self, node, cx) -> Optional[str]:
        if const_shape(node.inputs[0]) is not None:
            return "A is a constant"
        for index in (self.B, self.SCALES, self.ZERO_POINTS, self.BIAS):
            tensor = input_at(node, index)
            if tensor is not None and not isinstance(tensor, gs.Constant):
                return f"input {index} is computed at run time"
        if input_at(node, self.G_IDX) is not None:
            return "g_idx reorders the input features"
        n, b, scales = int(attr(node, "N", 0)), const_shape(node.inputs[self.B]), const_shape(node.inputs[self.SCALES])
        if b is None or len(b) != 3 or b[0] != n or scales is None or tuple(scales) != (n, b[1]):
            return "B or scales not [N, k_blocks, ...] and [N, k_blocks] (matmul_nbits_2d_scales did not apply)"
        return None

    def seeds(self, node, cx):
        rank = cx.rank(node.outputs[0])
        return [space_of(node.outputs[0], rank - 1)] if rank and self._problem(node, cx) is None else []

    def analyze(self, node, port, axis, cx):
        problem = self._problem(node, cx)
        if problem:
            return frozen(f"{node.name} ({node.op}) {problem}")
        a, y = node.inputs[0], node.outputs[0]
        rank = cx.rank(y)
        if rank is None or cx.rank(a) != rank:
            return frozen(f"{node.name} ({node.op}) rank unknown")
        if port == ("in", self.B) and axis == 1:
            port, axis = ("in", 0), rank - 1  # B's block axis: the input features it reads
        elif port[0] == "in" and port[1] != 0:
            return frozen(f"{node.name} ({node.op}) weight reached as an activation")
        if axis != rank - 1:
            size = cx.dim(y, axis)
            if size is None:
                return frozen(f"{node.name} ({node.op}) size unknown")
            return Effect(ties=[Tie(space_of(a, axis), space_of(y, axis), identity(size))])
        if port[0] == "out":
            params = [param(node, index, 0, PRODUCER, space_of(y, axis))
                      for index in (self.B, self.SCALES, self.ZERO_POINTS, self.BIAS) if input_at(node, index) is not None]
            return Effect(params=params)
        return self._input_blocks(node, cx, space_of(a, axis))

    def _input_blocks(self, node, cx, features) -> Effect:
        """Input features in whole blocks: B's axis 1 and the scales' axis 1 are indexed by block."""
        b = node.inputs[self.B]
        k, block, bits = int(attr(node, "K", 0)), int(attr(node, "block_size", 0)), int(attr(node, "bits", 4))
        k_blocks = b.shape[1]
        if cx.dim(node.inputs[0], features[1]) != k or k != k_blocks * block:
            return frozen(f"{node.name} ({node.op}) K={k} is not a whole number of blocks of {block}")
        zero = input_at(node, self.ZERO_POINTS)
        packed_zero = zero is not None and np.asarray(const_values(zero)).dtype == np.uint8
        if packed_zero and bits not in (4, 8):
            return frozen(f"{node.name} ({node.op}) {bits}-bit zero points packed across blocks")
        blocks = space_of(b, 1)
        effect = Effect(ties=[Tie(blocks, features, Block(k_blocks, k, outer=1, inner=block))],
                        params=[param(node, self.B, 1, CONSUMER, blocks), param(node, self.SCALES, 1, CONSUMER, blocks)])
        if zero is not None and not (packed_zero and bits == 4):
            effect.params.append(param(node, self.ZERO_POINTS, 1, PASSIVE, blocks))  # one entry per block
        return effect

    def rewrite(self, node, rx):
        a, y, b = node.inputs[0], node.outputs[0], node.inputs[self.B]
        rows = rx.kept(y, len(y.shape) - 1) if y.shape is not None else None
        features = rx.kept(a, len(a.shape) - 1) if a.shape is not None else None
        blocks = rx.kept(b, 1)
        if rows is not None:
            node.attrs["N"] = int(len(rows))
        if features is not None:
            node.attrs["K"] = int(len(features))
        zero = input_at(node, self.ZERO_POINTS)
        if blocks is not None and zero is not None and int(attr(node, "bits", 4)) == 4:
            values = np.asarray(const_values(zero))
            if values.dtype == np.uint8:  # two blocks per byte: unpack, keep the blocks, pack again
                codes = unpack_nibbles(values, 2 * values.shape[-1])
                rx.replace_const(node, self.ZERO_POINTS, pack_nibbles(codes[..., blocks]))

    def macs(self, node, shape_of):
        out = shape_of(node.outputs[0])
        return 0 if out is None else dims_product(out) * int(attr(node, "K", 0))

    def kept_fractions(self, node, fraction):
        out, x = node.outputs[0], node.inputs[0]
        return (fraction(out.name, len(out.shape or [None]) - 1), fraction(x.name, len(x.shape or [None]) - 1))


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
    "QLinearConcat": QLinearConcat(),
    "MatMulNBits": MatMulNBits(),
}
