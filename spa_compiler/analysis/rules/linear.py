"""Boundary rules: Conv, ConvTranspose, Gemm, MatMul consume one channel space and produce another.

Their rules also hold each op's layer layout, which the cost model and OBSPA ask for instead of
branching on op names: MACs and the kept fraction of them after pruning; for the layers OBSPA
compensates, the weight as an (out x features) matrix and the feature rows it multiplies (im2col).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import attr, const_shape, const_values, dims_product, input_at, static_dims
from ..effects import CONSUMER, PRODUCER, Effect, Tie, frozen
from ..maps import group_blocks, identity
from .base import Rule, ShapeOf, param, space_of

Fraction = Callable[[str, int], Optional[float]]  # kept fraction of a (tensor, axis) space; None = untouched


class Weighted(Rule):
    """A layer that multiplies its input by a weight (input 1): the cost model counts its MACs."""

    def macs(self, node: gs.Node, shape_of: ShapeOf) -> int:
        out = shape_of(node.outputs[0])
        x = shape_of(node.inputs[0])
        w = node.inputs[1].shape if len(node.inputs) > 1 and node.inputs[1].shape is not None else None
        if out is None or w is None:
            return 0
        w = [d if isinstance(d, (int, np.integer)) else 1 for d in w]
        return self.layer_macs(node, out, x, w)

    def layer_macs(self, node: gs.Node, out: list, x: Optional[list], w: list) -> int:
        """MACs from the output dims, input dims (None: unknown) and weight dims (unknown ones as 1)."""
        raise NotImplementedError

    def kept_fractions(self, node: gs.Node, fraction: Fraction) -> tuple[Optional[float], Optional[float]]:
        """(output, input) fractions the layer keeps after pruning (None = untouched): channels on axis 1."""
        f_out = fraction(node.outputs[0].name, 1)
        f_in = fraction(node.inputs[0].name, 1) if int(node.attrs.get("group", 1)) == 1 else None
        return f_out, f_in


class Compensable(Weighted):
    """A layer OBSPA compensates: its weight seen as an (out x features) matrix over feature rows."""

    def is_consumer_layer(self, node: gs.Node) -> bool:
        return True

    def feature_rows(self, node: gs.Node, x: np.ndarray, count: Optional[int] = None,
                     rng: Optional[np.random.Generator] = None) -> np.ndarray:
        """The rows the layer multiplies by its weight, from its input activation *x*.

        With *count*, at most that many rows drawn by *rng* (layers whose rows are views need not
        draw them before; Conv gathers only the drawn patches).
        """
        raise NotImplementedError

    def columns_per_channel(self, node: gs.Node) -> Optional[int]:
        """Weight columns per input channel where the closed-form moments describe the input, else None."""
        return None

    def weight_matrix(self, node: gs.Node, axis: int, values: np.ndarray) -> Optional[tuple[np.ndarray, int]]:
        """(the weight *values* as an (out x features) matrix, columns per input position), reading the
        input space on weight axis *axis*; None when the layout has no such view."""
        return None

    def weight_values(self, node: gs.Node, param, w: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """An (out x features) matrix back in the initializer's layout (*shape*); *param* the consumer slice."""
        return w if param.axis == 1 else w.T

    def consumer_matrix(self, node: gs.Node, param, values: np.ndarray) -> Optional[tuple[np.ndarray, int]]:
        """:meth:`weight_matrix` of the consumer slice *param* (layers with several weights pick theirs)."""
        return self.weight_matrix(node, param.axis, values)

    def measures(self, node: gs.Node, param) -> bool:
        """Whether the statistics of :meth:`statistics_input` are those of this consumer slice's inputs."""
        return True

    def statistics_input(self, node: gs.Node) -> gs.Tensor:
        """The activation the weight multiplies, as a float tensor: what OBSPA's statistics are taken on."""
        return node.inputs[0]

    def bias_input(self, node: gs.Node) -> Optional[int]:
        """Input position of a bias that can take the removed inputs' mean contribution (None: no bias)."""
        return None

    def folded_bias(self, node: gs.Node, bias: np.ndarray, shift: np.ndarray) -> Optional[np.ndarray]:
        """*bias* with the output mean *shift* (one value per row of the consumer matrix) added; None when
        its layout does not take it."""
        return bias + shift if bias.shape == shift.shape else None

    def representable(self, node: gs.Node, param, w: np.ndarray) -> np.ndarray:
        """The (out x features) matrix *w* as the layer can store it (quantized layers: on their integer grid)."""
        return w


class Conv(Compensable):
    """Conv: a boundary for group == 1; grouped/depthwise convs tie input and output group-wise."""

    WEIGHT, BIAS = 1, 2  # input positions (QLinearConv keeps them elsewhere; ConvInteger has no bias)

    def bias_input(self, node):
        return self.BIAS

    def _weight(self, node) -> Optional[np.ndarray]:
        return const_shape(node.inputs[self.WEIGHT]) if len(node.inputs) > self.WEIGHT else None

    def seeds(self, node, cx):
        return [space_of(node.outputs[0], 1)] if self._weight(node) is not None else []

    def analyze(self, node, port, axis, cx):
        w = self._weight(node)
        if w is None:
            return frozen(f"{node.name} ({node.op}) weight is not a constant")
        if port[0] == "in" and port[1] != 0:
            return frozen(f"{node.name} ({node.op}) weight or bias is computed at run time")
        if axis != 1:
            return frozen(f"{node.name} ({node.op}) spatial or batch axis {axis}")
        groups = int(attr(node, "group", 1))
        x, y = node.inputs[0], node.outputs[0]
        bias = None if self.BIAS is None else input_at(node, self.BIAS)
        if bias is not None and const_shape(bias) is None:
            return frozen(f"{node.name} ({node.op}) bias is computed at run time")
        c_out, c_in = w[0], w[1] * groups
        out_space = space_of(y, 1)
        if groups == 1:
            if port[0] == "in":
                return Effect(params=[param(node, self.WEIGHT, 1, CONSUMER, space_of(x, 1))])
            params = [param(node, self.WEIGHT, 0, PRODUCER, out_space)]
            if bias is not None:
                params.append(param(node, self.BIAS, 0, PRODUCER, out_space))
            return Effect(params=params)
        params = [param(node, self.WEIGHT, 0, PRODUCER, out_space)]
        if bias is not None:
            params.append(param(node, self.BIAS, 0, PRODUCER, out_space))
        return Effect(ties=[Tie(space_of(x, 1), out_space, group_blocks(c_in, c_out, groups))], params=params)

    def rewrite(self, node, rx):
        groups = int(attr(node, "group", 1))
        if groups == 1:
            return
        kept = rx.kept(node.outputs[0], 1)
        if kept is None:
            return
        out_per_group = static_dims(node.outputs[0].shape)[1] // groups  # shapes are still the old ones
        node.attrs["group"] = int(len(kept) // out_per_group)

    def layer_macs(self, node, out, x, w):
        return dims_product(out[:1]) * dims_product(out[1:]) * dims_product(w[1:])

    def feature_rows(self, node, x, count=None, rng=None):
        return _im2col(node, x, count, rng)

    def columns_per_channel(self, node):
        return int(np.prod(const_values(node.inputs[1]).shape[2:]))

    def weight_matrix(self, node, axis, values):
        if axis == 1 and int(node.attrs.get("group", 1)) == 1:
            return values.reshape(values.shape[0], -1), int(np.prod(values.shape[2:]))
        return None

    def weight_values(self, node, param, w, shape):
        return w.reshape(shape)


class ConvTranspose(Weighted):
    """ConvTranspose (group 1): weight is [C_in, C_out, k...], so the axes swap roles."""

    def seeds(self, node, cx):
        if const_shape(node.inputs[1]) is None or int(attr(node, "group", 1)) != 1:
            return []
        return [space_of(node.outputs[0], 1)]

    def analyze(self, node, port, axis, cx):
        if const_shape(node.inputs[1]) is None:
            return frozen(f"{node.name} ({node.op}) weight is not a constant")
        if int(attr(node, "group", 1)) != 1:
            return frozen(f"{node.name} ({node.op}) grouped ConvTranspose has no rule yet")
        if port[0] == "in" and port[1] != 0:
            return frozen(f"{node.name} ({node.op}) weight or bias is computed at run time")
        if axis != 1:
            return frozen(f"{node.name} ({node.op}) spatial or batch axis {axis}")
        if input_at(node, 2) is not None and const_shape(node.inputs[2]) is None:
            return frozen(f"{node.name} ({node.op}) bias is computed at run time")
        if port[0] == "in":
            return Effect(params=[param(node, 1, 0, CONSUMER, space_of(node.inputs[0], 1))])
        out_space = space_of(node.outputs[0], 1)
        params = [param(node, 1, 1, PRODUCER, out_space)]
        if input_at(node, 2) is not None:
            params.append(param(node, 2, 0, PRODUCER, out_space))
        return Effect(params=params)

    def layer_macs(self, node, out, x, w):
        return 0 if x is None else dims_product(x) * dims_product(w[1:])


class Gemm(Compensable):
    """Gemm with a constant B: a boundary between A's features and the output features."""

    WEIGHT, BIAS = 1, 2  # input positions of B and C (QGemm keeps them elsewhere)

    def bias_input(self, node):
        return self.BIAS

    def seeds(self, node, cx):
        ok = const_shape(node.inputs[self.WEIGHT]) is not None and not attr(node, "transA", 0)
        return [space_of(node.outputs[0], 1)] if ok else []

    def analyze(self, node, port, axis, cx):
        if const_shape(node.inputs[self.WEIGHT]) is None:
            return frozen(f"{node.name} ({node.op}) B is not a constant")
        if attr(node, "transA", 0):
            return frozen(f"{node.name} ({node.op}) transA=1")
        trans_b = bool(attr(node, "transB", 0))
        a, y = node.inputs[0], node.outputs[0]
        if port[0] == "in" and port[1] != 0:
            return frozen(f"{node.name} ({node.op}) operand {port[1]} is computed at run time")
        if axis == 0:
            rows = cx.dim(y, 0)
            if rows is None:
                return frozen(f"{node.name} ({node.op}) row count unknown")
            return Effect(ties=[Tie(space_of(a, 0), space_of(y, 0), identity(rows))])
        if port[0] == "in":
            return Effect(params=[param(node, self.WEIGHT, 1 if trans_b else 0, CONSUMER, space_of(a, 1))])
        out_space = space_of(y, 1)
        params = [param(node, self.WEIGHT, 0 if trans_b else 1, PRODUCER, out_space)]
        c = input_at(node, self.BIAS)
        if c is not None:
            cv = const_shape(c)
            if cv is None:
                return frozen(f"{node.name} ({node.op}) C is computed at run time")
            if len(cv) >= 1 and cv[-1] == cx.dim(y, 1) and cv[-1] > 1:
                params.append(param(node, self.BIAS, len(cv) - 1, PRODUCER, out_space))
            elif len(cv) == 2 and cv[0] > 1:
                return frozen(f"{node.name} ({node.op}) C varies along rows")
        return Effect(params=params)

    def layer_macs(self, node, out, x, w):
        k = x[0] if node.attrs.get("transA", 0) and x else (x[-1] if x else 1)
        return dims_product(out) * (k or 1)

    def feature_rows(self, node, x, count=None, rng=None):
        return x.T if node.attrs.get("transA", 0) else x

    def columns_per_channel(self, node):
        return None if node.attrs.get("transA", 0) else 1

    def weight_matrix(self, node, axis, values):
        return _matrix_of(axis, values)


class MatMul(Compensable):
    """MatMul: a boundary when one operand is a 2-D constant, a set of axis ties when both are activations.

    With a weight W on the right (``x @ W``) the last axis is the boundary; with
    W on the left (``W @ x``) the second-to-last.  Between two activations
    (attention scores ``Q @ K^T`` and context ``P @ V``) leading axes tie as
    broadcast batch axes (the head axis), rows tie to output rows, columns to
    output columns, and the contracted axes of both operands tie together
    (inexactly: removing them changes the sum).
    """

    def layer_macs(self, node, out, x, w):
        return 0 if x is None else dims_product(out) * (x[-1] or 1)

    def feature_rows(self, node, x, count=None, rng=None):
        return x.reshape(-1, x.shape[-1])

    def weight_matrix(self, node, axis, values):
        return _matrix_of(axis, values)

    def kept_fractions(self, node, fraction):
        """Every output axis may shrink (heads are a batch axis of attention's products); input: the last."""
        out, x = node.outputs[0], node.inputs[0]
        rank = len(out.shape or [])
        kept = [fraction(out.name, axis) for axis in range(rank)]
        f_out = float(np.prod([1.0 if f is None else f for f in kept]))
        f_in = fraction(x.name, len(x.shape or [None]) - 1)
        return f_out, f_in

    def _weights(self, node):
        wa, wb = const_shape(node.inputs[0]), const_shape(node.inputs[1])
        return (wa if wa is not None and len(wa) == 2 else None), (wb if wb is not None and len(wb) == 2 else None)

    def seeds(self, node, cx):
        y = node.outputs[0]
        rank = cx.rank(y)
        wa, wb = self._weights(node)
        if rank is None or rank < 2:
            return []
        if wb is not None and const_shape(node.inputs[0]) is None:
            return [space_of(y, rank - 1)]
        if wa is not None and const_shape(node.inputs[1]) is None:
            return [space_of(y, rank - 2)]
        return []

    def analyze(self, node, port, axis, cx):
        wa, wb = self._weights(node)
        a_const, b_const = const_shape(node.inputs[0]) is not None, const_shape(node.inputs[1]) is not None
        if wb is not None and not a_const:
            return self._with_weight(node, port, axis, cx, data=0, contract=-1)
        if wa is not None and not b_const:
            return self._with_weight(node, port, axis, cx, data=1, contract=-2)
        if not a_const and not b_const:
            return self._activations(node, port, axis, cx)
        return frozen(f"{node.name} ({node.op}) constant operand of rank > 2")

    def _with_weight(self, node, port, axis, cx, data: int, contract: int, weight: Optional[int] = None) -> Effect:
        """x @ W (data=0, contracting x's last axis) or W @ x (data=1, contracting x's second-to-last).

        *weight*: W's input position when it is not the other operand (QLinearMatMul's b is input 3).
        """
        weight = 1 - data if weight is None else weight
        if port[0] == "in" and port[1] != data:
            return frozen(f"{node.name} ({node.op}) weight reached as an activation")
        x, y = node.inputs[data], node.outputs[0]
        rank = cx.rank(y)
        if rank is None or cx.rank(x) != rank:
            return frozen(f"{node.name} ({node.op}) rank unknown or 1-D operand")
        channel = rank + contract
        if axis == channel:
            w_in, w_out = (0, 1) if data == 0 else (1, 0)
            if port[0] == "in":
                return Effect(params=[param(node, weight, w_in, CONSUMER, space_of(x, axis))])
            return Effect(params=[param(node, weight, w_out, PRODUCER, space_of(y, axis))])
        size = cx.dim(y, axis)
        if size is None:
            return frozen(f"{node.name} ({node.op}) size of axis {axis} unknown")
        return Effect(ties=[Tie(space_of(x, axis), space_of(y, axis), identity(size))])

    def _activations(self, node, port, axis, cx) -> Effect:
        a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
        ra, rb, ry = cx.rank(a), cx.rank(b), cx.rank(y)
        if None in (ra, rb, ry) or ra < 2 or rb < 2:
            return frozen(f"{node.name} ({node.op}) operand ranks unknown or 1-D")
        if port[0] == "out":
            cls = "N" if axis == ry - 1 else "M" if axis == ry - 2 else axis
        elif port[1] == 0:
            cls = "K" if axis == ra - 1 else "M" if axis == ra - 2 else axis + ry - ra
        else:
            cls = "K" if axis == rb - 2 else "N" if axis == rb - 1 else axis + ry - rb
        if cls == "M":
            members = [(a, ra - 2), (y, ry - 2)]
        elif cls == "N":
            members = [(b, rb - 1), (y, ry - 1)]
        elif cls == "K":
            members = [(a, ra - 1), (b, rb - 2)]
        else:
            size = cx.dim(y, cls)
            members = [(y, cls)] + [(t, cls - (ry - r)) for t, r in ((a, ra), (b, rb))
                                    if cls - (ry - r) >= 0 and cx.dim(t, cls - (ry - r)) == size]
        sizes = {cx.dim(t, ax) for t, ax in members}
        if len(sizes) != 1 or None in sizes:
            return frozen(f"{node.name} ({node.op}) tied axes have unknown or different sizes")
        size = sizes.pop()
        anchor = space_of(*members[0])
        effect = Effect(ties=[Tie(anchor, space_of(t, ax), identity(size)) for t, ax in members[1:]])
        if cls == "K":
            effect.inexact = f"{node.name} ({node.op}) contracts over this axis (removing entries changes the sum)"
        return effect


def _matrix_of(axis: int, values: np.ndarray) -> Optional[tuple[np.ndarray, int]]:
    """A 2-D weight (Gemm's B, MatMul's W) as (out x in): transposed when the input space is its axis 0."""
    if values.ndim != 2:
        return None
    return np.array(values if axis == 1 else values.T), 1


def _padded(x: np.ndarray, pads: list[int], spatial_axis: int) -> np.ndarray:
    """*x* zero-padded by ONNX *pads* (top, left, bottom, right) on its two spatial axes from *spatial_axis*;
    *x* itself when there is no padding (a copy of the whole batch: not for the unpadded 1x1 convolutions)."""
    if not any(pads):
        return x
    widths = [(0, 0)] * x.ndim
    widths[spatial_axis], widths[spatial_axis + 1] = (pads[0], pads[2]), (pads[1], pads[3])
    return np.pad(x, widths)


def _im2col(node: gs.Node, x: np.ndarray, count: Optional[int] = None,
            rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Patches of a 2-D (or 1-D) Conv input as rows of ``C * kh * kw`` features, channel-major.

    With *count*, only that many output positions (drawn by *rng* without replacement) are gathered:
    a statistics run needs a few thousand rows, and the full patch matrix of an early ResNet layer at
    224x224 is hundreds of MB per batch.
    """
    w = const_values(node.inputs[1])
    kernel = list(w.shape[2:])
    if x.ndim == 3:
        x, kernel = x[:, :, None, :], [1] + kernel
    if x.ndim != 4:
        raise ValueError("only 1-D and 2-D convolutions")
    strides = list(node.attrs.get("strides", [1] * len(w.shape[2:])))
    dilations = list(node.attrs.get("dilations", [1] * len(w.shape[2:])))
    pads = list(node.attrs.get("pads", [0] * 2 * len(w.shape[2:])))
    if len(strides) == 1:
        strides, dilations, pads = [1] + strides, [1] + dilations, [0, pads[0], 0, pads[1]]
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", "VALID", b"VALID"):
        total = [(k - 1) * d for k, d in zip(kernel, dilations)]
        pads = [t // 2 for t in total] + [t - t // 2 for t in total]
    n, c = x.shape[:2]
    height, width = x.shape[2] + pads[0] + pads[2], x.shape[3] + pads[1] + pads[3]
    kh, kw = kernel
    dh, dw = dilations
    out_h = (height - (kh - 1) * dh - 1) // strides[0] + 1
    out_w = (width - (kw - 1) * dw - 1) // strides[1] + 1
    if count is not None and count < n * out_h * out_w:
        # gathered from a channels-last copy: each position's channels are then one contiguous run (a
        # gather across channel planes was 2x slower on a 256-channel 14x14 batch); the same values
        pixels = _padded(x.transpose(0, 2, 3, 1), pads, spatial_axis=1)
        pick = (rng or np.random.default_rng(0)).choice(n * out_h * out_w, count, replace=False)
        b, rest = np.divmod(pick, out_h * out_w)
        oy, ox = np.divmod(rest, out_w)
        ys = oy[:, None, None] * strides[0] + np.arange(kh)[None, :, None] * dh   # (m, kh, 1)
        xs = ox[:, None, None] * strides[1] + np.arange(kw)[None, None, :] * dw   # (m, 1, kw)
        patches = pixels[b[:, None, None], ys, xs]                                 # (m, kh, kw, c)
        return patches.transpose(0, 3, 1, 2).reshape(count, c * kh * kw)
    x = _padded(x, pads, spatial_axis=2)
    cols = np.empty((n, c, kh, kw, out_h, out_w), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = x[:, :, i * dh: i * dh + strides[0] * out_h: strides[0],
                                 j * dw: j * dw + strides[1] * out_w: strides[1]]
    return cols.transpose(0, 4, 5, 1, 2, 3).reshape(n * out_h * out_w, c * kh * kw)
