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

import numpy as np
import onnx_graphsurgeon as gs

from ..ir import attr, const_values, input_at, int_list, normalize_axes
from .context import AnalysisContext, RewriteContext
from .effects import CONSUMER, NEUTRAL, PASSIVE, PRODUCER, Effect, ParamSlice, Space, Tie, frozen
from .maps import Affine, Block, Explicit, group_blocks, identity

Port = tuple[str, int]  # ("in", i) or ("out", i)


def _space(tensor: gs.Tensor, axis: int) -> Space:
    return (tensor.name, axis)


def _axis_tie(node: gs.Node, in_axis: int, out_axis: int, cx: AnalysisContext) -> Effect:
    """Identity tie between axis *in_axis* of the data input and *out_axis* of the output."""
    size = cx.dim(node.outputs[0], out_axis)
    if size is None:
        return frozen(f"{node.name} ({node.op}) size of axis {out_axis} unknown")
    return Effect(ties=[Tie(_space(node.inputs[0], in_axis), _space(node.outputs[0], out_axis), identity(size))])


def _param(node: gs.Node, index: int, axis: int, role: str, space: Space) -> ParamSlice:
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


class Neutral(Rule):
    """Reads only the shape of its input (Shape, Size): no tie, nothing to freeze."""

    def analyze(self, node, port, axis, cx):
        return NEUTRAL


class Elementwise(Rule):
    """Numpy-broadcasting ops: output axis k ties every input axis of the same size aligned to it.

    Constant operands with a full-size axis there become passive parameter
    slices (per-channel scales, biases, PRelu slopes); size-1 axes broadcast.
    """

    def __init__(self, data_inputs: Optional[int] = None):
        self.data_inputs = data_inputs  # only the first N inputs broadcast (e.g. Clip's min/max are scalars)

    def analyze(self, node, port, axis, cx):
        if len(node.outputs) != 1 and any(o.outputs for o in node.outputs[1:]):
            return frozen(f"{node.name} ({node.op}) uses a secondary output")
        out = node.outputs[0]
        out_rank = cx.rank(out)
        if out_rank is None:
            return frozen(f"{node.name} ({node.op}) output rank unknown")
        if port[0] == "out":
            out_axis = axis
        else:
            in_rank = cx.rank(node.inputs[port[1]])
            if in_rank is None:
                return frozen(f"{node.name} ({node.op}) input rank unknown")
            out_axis = axis + (out_rank - in_rank)
        size = cx.dim(out, out_axis)
        if size is None:
            return frozen(f"{node.name} ({node.op}) channel size unknown")
        anchor = _space(out, out_axis)
        effect = Effect()
        inputs = node.inputs if self.data_inputs is None else node.inputs[: self.data_inputs]
        for i, tensor in enumerate(inputs):
            if tensor is None or (isinstance(tensor, gs.Variable) and tensor.name == ""):
                continue
            rank = cx.rank(tensor)
            if rank is None:
                return frozen(f"{node.name} ({node.op}) input {i} rank unknown")
            k = out_axis - (out_rank - rank)
            if k < 0:
                continue
            dim = cx.dim(tensor, k)
            if dim == 1 and size != 1:
                continue
            if dim != size:
                return frozen(f"{node.name} ({node.op}) input {i} size {dim} does not match {size}")
            if isinstance(tensor, gs.Constant):
                effect.params.append(_param(node, i, k, PASSIVE, anchor))
            else:
                effect.ties.append(Tie(_space(tensor, k), anchor, identity(size)))
        return effect


class Normalization(Elementwise):
    """BatchNormalization / InstanceNormalization: per-channel parameters on axis 1, exact."""

    def __init__(self, n_params: int):
        super().__init__()
        self.n_params = n_params

    def analyze(self, node, port, axis, cx):
        if any(o.outputs for o in node.outputs[1:]):
            return frozen(f"{node.name} ({node.op}) in training mode")
        x, out = node.inputs[0], node.outputs[0]
        if port == ("out", 0) or port == ("in", 0):
            size = cx.dim(out, axis)
            if size is None:
                return frozen(f"{node.name} ({node.op}) channel size unknown")
            anchor = _space(out, axis)
            effect = Effect(ties=[Tie(_space(x, axis), anchor, identity(size))])
            if axis == 1:
                for i in range(1, 1 + self.n_params):
                    if not isinstance(node.inputs[i], gs.Constant):
                        return frozen(f"{node.name} ({node.op}) parameters are not constants")
                    effect.params.append(_param(node, i, 0, PASSIVE, anchor))
            return effect
        return frozen(f"{node.name} ({node.op}) statistic input reached")


class Softmax(Elementwise):
    """Softmax-like ops: elementwise except along their axis, where removing entries renormalizes."""

    def analyze(self, node, port, axis, cx):
        rank = cx.rank(node.outputs[0])
        default = -1 if cx.opset >= 13 else 1
        ax = normalize_axes([attr(node, "axis", default)], rank or 0)[0]
        hit = axis == ax if cx.opset >= 13 else axis >= ax
        if hit:
            return frozen(f"{node.name} ({node.op}) normalizes over the channel axis")
        return super().analyze(node, port, axis, cx)


class Conv(Rule):
    """Conv: a boundary for group == 1; grouped/depthwise convs tie input and output group-wise."""

    def _weight(self, node) -> Optional[np.ndarray]:
        return const_values(node.inputs[1]) if len(node.inputs) > 1 else None

    def seeds(self, node, cx):
        return [_space(node.outputs[0], 1)] if self._weight(node) is not None else []

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
        if input_at(node, 2) is not None and const_values(node.inputs[2]) is None:
            return frozen(f"{node.name} ({node.op}) bias is computed at run time")
        c_out, c_in = w.shape[0], w.shape[1] * groups
        out_space = _space(y, 1)
        bias = input_at(node, 2)
        if groups == 1:
            if port[0] == "in":
                return Effect(params=[_param(node, 1, 1, CONSUMER, _space(x, 1))])
            params = [_param(node, 1, 0, PRODUCER, out_space)]
            if bias is not None:
                params.append(_param(node, 2, 0, PRODUCER, out_space))
            return Effect(params=params)
        params = [_param(node, 1, 0, PRODUCER, out_space)]
        if bias is not None:
            params.append(_param(node, 2, 0, PRODUCER, out_space))
        return Effect(ties=[Tie(_space(x, 1), out_space, group_blocks(c_in, c_out, groups))], params=params)

    def rewrite(self, node, rx):
        groups = int(attr(node, "group", 1))
        if groups == 1:
            return
        kept = rx.kept(node.outputs[0], 1)
        if kept is None:
            return
        out_per_group = _static(node.outputs[0].shape)[1] // groups  # shapes are still the old ones
        node.attrs["group"] = int(len(kept) // out_per_group)


class ConvTranspose(Rule):
    """ConvTranspose (group 1): weight is [C_in, C_out, k...], so the axes swap roles."""

    def seeds(self, node, cx):
        if const_values(node.inputs[1]) is None or int(attr(node, "group", 1)) != 1:
            return []
        return [_space(node.outputs[0], 1)]

    def analyze(self, node, port, axis, cx):
        if const_values(node.inputs[1]) is None:
            return frozen(f"{node.name} ({node.op}) weight is not a constant")
        if int(attr(node, "group", 1)) != 1:
            return frozen(f"{node.name} ({node.op}) grouped ConvTranspose has no rule yet")
        if port[0] == "in" and port[1] != 0:
            return frozen(f"{node.name} ({node.op}) weight or bias is computed at run time")
        if axis != 1:
            return frozen(f"{node.name} ({node.op}) spatial or batch axis {axis}")
        if input_at(node, 2) is not None and const_values(node.inputs[2]) is None:
            return frozen(f"{node.name} ({node.op}) bias is computed at run time")
        if port[0] == "in":
            return Effect(params=[_param(node, 1, 0, CONSUMER, _space(node.inputs[0], 1))])
        out_space = _space(node.outputs[0], 1)
        params = [_param(node, 1, 1, PRODUCER, out_space)]
        if input_at(node, 2) is not None:
            params.append(_param(node, 2, 0, PRODUCER, out_space))
        return Effect(params=params)


class Gemm(Rule):
    """Gemm with a constant B: a boundary between A's features and the output features."""

    def seeds(self, node, cx):
        ok = const_values(node.inputs[1]) is not None and not attr(node, "transA", 0)
        return [_space(node.outputs[0], 1)] if ok else []

    def analyze(self, node, port, axis, cx):
        if const_values(node.inputs[1]) is None:
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
            return Effect(ties=[Tie(_space(a, 0), _space(y, 0), identity(rows))])
        if port[0] == "in":
            return Effect(params=[_param(node, 1, 1 if trans_b else 0, CONSUMER, _space(a, 1))])
        out_space = _space(y, 1)
        params = [_param(node, 1, 0 if trans_b else 1, PRODUCER, out_space)]
        c = input_at(node, 2)
        if c is not None:
            cv = const_values(c)
            if cv is None:
                return frozen(f"{node.name} ({node.op}) C is computed at run time")
            if cv.ndim >= 1 and cv.shape[-1] == cx.dim(y, 1) and cv.shape[-1] > 1:
                params.append(_param(node, 2, cv.ndim - 1, PRODUCER, out_space))
            elif cv.ndim == 2 and cv.shape[0] > 1:
                return frozen(f"{node.name} ({node.op}) C varies along rows")
        return Effect(params=params)


class MatMul(Rule):
    """MatMul with a constant 2-D right operand: a boundary on the last axis, identity on the others."""

    def _weight(self, node):
        w = const_values(node.inputs[1])
        return w if w is not None and w.ndim == 2 else None

    def seeds(self, node, cx):
        y = node.outputs[0]
        if self._weight(node) is None or const_values(node.inputs[0]) is not None or cx.rank(y) is None:
            return []
        return [_space(y, cx.rank(y) - 1)]

    def analyze(self, node, port, axis, cx):
        if self._weight(node) is None:
            return frozen(f"{node.name} ({node.op}) of two activations (attention rule pending)")
        if port[0] == "in" and port[1] != 0:
            return frozen(f"{node.name} ({node.op}) weight reached as an activation")
        a, y = node.inputs[0], node.outputs[0]
        rank = cx.rank(y)
        if rank is None or cx.rank(a) != rank:
            return frozen(f"{node.name} ({node.op}) rank unknown or 1-D operand")
        if axis == rank - 1:
            if port[0] == "in":
                return Effect(params=[_param(node, 1, 0, CONSUMER, _space(a, axis))])
            return Effect(params=[_param(node, 1, 1, PRODUCER, _space(y, axis))])
        size = cx.dim(y, axis)
        if size is None:
            return frozen(f"{node.name} ({node.op}) size of axis {axis} unknown")
        return Effect(ties=[Tie(_space(a, axis), _space(y, axis), identity(size))])


class Pool(Rule):
    """Pooling: channels and batch pass through; spatial axes are not channel spaces."""

    def analyze(self, node, port, axis, cx):
        if len(node.outputs) > 1 and node.outputs[1].outputs:
            return frozen(f"{node.name} ({node.op}) pooling indices are used")
        if port != ("in", 0) and port != ("out", 0):
            return frozen(f"{node.name} ({node.op}) unexpected operand")
        if axis > 1 and cx.dim(node.inputs[0], axis) != cx.dim(node.outputs[0], axis):
            return frozen(f"{node.name} ({node.op}) resizes axis {axis}")
        return _axis_tie(node, axis, axis, cx)


class Resize(Pool):
    """Resize/Upsample: exact on axes it does not scale."""


class Pad(Rule):
    """Pad: identity on axes with no padding."""

    def analyze(self, node, port, axis, cx):
        if port != ("in", 0) and port != ("out", 0):
            return frozen(f"{node.name} ({node.op}) pads computed at run time")
        if cx.dim(node.inputs[0], axis) != cx.dim(node.outputs[0], axis):
            return frozen(f"{node.name} ({node.op}) pads axis {axis}")
        return _axis_tie(node, axis, axis, cx)


class Reduce(Rule):
    """Reductions: exact over other axes; a reduction over the channel axis freezes it."""

    def _axes(self, node, cx) -> Optional[list[int]]:
        rank = cx.rank(node.inputs[0])
        if rank is None:
            return None
        if node.op in ("ArgMax", "ArgMin"):
            return normalize_axes([int(attr(node, "axis", 0))], rank)
        axes = int_list(node, "axes", 1)
        if axes is None:
            if input_at(node, 1) is not None:
                return None
            return [] if attr(node, "noop_with_empty_axes", 0) else list(range(rank))
        return normalize_axes(axes, rank)

    def analyze(self, node, port, axis, cx):
        axes = self._axes(node, cx)
        if axes is None or port[1] != 0:
            return frozen(f"{node.name} ({node.op}) axes unknown")
        keep = bool(attr(node, "keepdims", 1))
        rank = cx.rank(node.inputs[0])
        if port[0] == "in":
            if axis in axes:
                return frozen(f"{node.name} ({node.op}) reduces over the channel axis")
            out_axis = axis if keep else axis - sum(1 for a in axes if a < axis)
            in_axis = axis
        else:
            kept_axes = list(range(rank)) if keep else [a for a in range(rank) if a not in axes]
            in_axis = kept_axes[axis]
            if in_axis in axes:
                return frozen(f"{node.name} ({node.op}) reduced axis reached")
            out_axis = axis
        return _axis_tie(node, in_axis, out_axis, cx)


class Transpose(Rule):
    def analyze(self, node, port, axis, cx):
        rank = cx.rank(node.inputs[0])
        if rank is None:
            return frozen(f"{node.name} ({node.op}) rank unknown")
        perm = list(attr(node, "perm", list(range(rank))[::-1]))
        in_axis, out_axis = (axis, perm.index(axis)) if port[0] == "in" else (perm[axis], axis)
        return _axis_tie(node, in_axis, out_axis, cx)


class SqueezeLike(Rule):
    """Squeeze/Unsqueeze: axes map one to one after removing/inserting unit axes."""

    def analyze(self, node, port, axis, cx):
        x, y = node.inputs[0], node.outputs[0]
        in_shape, out_shape = cx.shape(x), cx.shape(y)
        if in_shape is None or out_shape is None:
            return frozen(f"{node.name} ({node.op}) shapes unknown")
        axes = int_list(node, "axes", 1)
        if node.op == "Squeeze":
            axes = normalize_axes(axes, len(in_shape)) if axes is not None else \
                [i for i, d in enumerate(in_shape) if d == 1]
            mapping = [i for i in range(len(in_shape)) if i not in axes]  # out axis -> in axis
        else:
            if axes is None:
                return frozen(f"{node.name} ({node.op}) axes unknown")
            axes = normalize_axes(axes, len(out_shape))
            mapping = [None] * len(out_shape)
            src = iter(range(len(in_shape)))
            for i in range(len(out_shape)):
                mapping[i] = None if i in axes else next(src)
        if port[0] == "in":
            if axis not in mapping:
                return frozen(f"{node.name} ({node.op}) squeezes the channel axis")
            in_axis, out_axis = axis, mapping.index(axis)
        else:
            in_axis, out_axis = mapping[axis], axis
            if in_axis is None:
                return frozen(f"{node.name} ({node.op}) inserted axis")
        return _axis_tie(node, in_axis, out_axis, cx)


class Concat(Rule):
    """Concat: offset map along its axis, identity (and equal sizes) on the others."""

    def _axis(self, node, cx):
        return normalize_axes([int(attr(node, "axis", 0))], cx.rank(node.outputs[0]) or 0)[0]

    def analyze(self, node, port, axis, cx):
        if cx.rank(node.outputs[0]) is None:
            return frozen(f"{node.name} ({node.op}) rank unknown")
        cat_axis = self._axis(node, cx)
        y = node.outputs[0]
        effect = Effect()
        if axis == cat_axis:
            offset = 0
            total = cx.dim(y, axis)
            for i, tensor in enumerate(node.inputs):
                size = cx.dim(tensor, axis)
                if size is None or total is None:
                    return frozen(f"{node.name} ({node.op}) sizes unknown")
                if isinstance(tensor, gs.Constant):
                    return frozen(f"{node.name} ({node.op}) concatenates a constant on the channel axis")
                if size:
                    effect.ties.append(Tie(_space(tensor, axis), _space(y, axis), Affine(size, total, offset, 1)))
                offset += size
            return effect
        size = cx.dim(y, axis)
        if size is None:
            return frozen(f"{node.name} ({node.op}) size unknown")
        for tensor in node.inputs:
            if isinstance(tensor, gs.Constant):
                return frozen(f"{node.name} ({node.op}) constant operand along a channel axis")
            effect.ties.append(Tie(_space(tensor, axis), _space(y, axis), identity(size)))
        return effect


class Split(Rule):
    """Split: each output is an offset window of the input along the split axis."""

    def _axis(self, node, cx):
        return normalize_axes([int(attr(node, "axis", 0))], cx.rank(node.inputs[0]) or 0)[0]

    def analyze(self, node, port, axis, cx):
        x = node.inputs[0]
        if port[0] == "in" and port[1] != 0:
            return frozen(f"{node.name} ({node.op}) split sizes computed at run time")
        if cx.rank(x) is None:
            return frozen(f"{node.name} ({node.op}) rank unknown")
        split_axis = self._axis(node, cx)
        total = cx.dim(x, axis)
        if total is None:
            return frozen(f"{node.name} ({node.op}) size unknown")
        effect = Effect()
        if axis != split_axis:
            for y in node.outputs:
                effect.ties.append(Tie(_space(x, axis), _space(y, axis), identity(total)))
            return effect
        offset = 0
        for y in node.outputs:
            size = cx.dim(y, axis)
            if size is None:
                return frozen(f"{node.name} ({node.op}) output sizes unknown")
            if size:
                effect.ties.append(Tie(_space(y, axis), _space(x, axis), Affine(size, total, offset, 1)))
            offset += size
        return effect

    def rewrite(self, node, rx):
        axis = self._axis_from_shape(node)
        kept = [rx.kept(y, axis) for y in node.outputs]
        if all(k is None for k in kept):
            return
        sizes = np.array([len(k) if k is not None else _static(y.shape)[axis]
                          for k, y in zip(kept, node.outputs)], dtype=np.int64)
        node.attrs.pop("num_outputs", None)
        if "split" in node.attrs:
            node.attrs["split"] = [int(s) for s in sizes]
        elif input_at(node, 1) is not None:
            rx.replace_const(node, 1, sizes)
        elif rx.facts["opset"] >= 13:
            node.inputs.append(gs.Constant(rx.fresh_name(f"{node.name}_split"), sizes))
        else:
            node.attrs["split"] = [int(s) for s in sizes]

    def _axis_from_shape(self, node):
        return int(attr(node, "axis", 0)) if int(attr(node, "axis", 0)) >= 0 else \
            int(attr(node, "axis", 0)) + len(node.inputs[0].shape)


class Slice(Rule):
    """Slice with constant bounds: an affine window of its input (step 1 on channel axes)."""

    def _params(self, node, cx, axis):
        shape = cx.shape(node.inputs[0])
        if shape is None:
            return None
        starts = int_list(node, "starts", 1)
        ends = int_list(node, "ends", 2)
        axes = int_list(node, "axes", 3)
        steps = int_list(node, "steps", 4)
        if starts is None or ends is None:
            return None
        axes = normalize_axes(axes if axes is not None else list(range(len(starts))), len(shape))
        steps = steps if steps is not None else [1] * len(starts)
        if axis not in axes:
            return 0, shape[axis], 1, False
        k = axes.index(axis)
        size = shape[axis]
        if size is None:
            return None
        start, stop, step = slice(starts[k], ends[k], steps[k]).indices(size)
        return start, stop, step, True

    def analyze(self, node, port, axis, cx):
        if port[0] == "in" and port[1] != 0:
            return frozen(f"{node.name} ({node.op}) bounds computed at run time")
        params = self._params(node, cx, axis)
        x, y = node.inputs[0], node.outputs[0]
        if params is None:
            return frozen(f"{node.name} ({node.op}) bounds not constant")
        start, stop, step, sliced = params
        out = cx.dim(y, axis)
        if out is None or cx.dim(x, axis) is None:
            return frozen(f"{node.name} ({node.op}) size unknown")
        if sliced and step != 1:
            return frozen(f"{node.name} ({node.op}) strided slice on axis {axis}")
        if sliced:
            cx.facts.setdefault("slices", {})[(node.name, axis)] = (start, stop)
        return Effect(ties=[Tie(_space(y, axis), _space(x, axis), Affine(out, cx.dim(x, axis), start, 1))])

    def rewrite(self, node, rx):
        for (name, axis), (start, stop) in rx.facts.get("slices", {}).items():
            if name != node.name:
                continue
            kept = rx.kept(node.inputs[0], axis)
            if kept is None:
                continue
            new_start = int(np.searchsorted(kept, start))
            new_stop = int(np.searchsorted(kept, stop))
            axes = int_list(node, "axes", 3)
            rank = len(node.inputs[0].shape)
            axes = normalize_axes(axes if axes is not None else list(range(rank)), rank)
            k = axes.index(axis)
            for index, attr_name, value in ((1, "starts", new_start), (2, "ends", new_stop)):
                values = np.array(int_list(node, attr_name, index), dtype=np.int64)
                values[k] = value
                if attr_name in node.attrs:
                    node.attrs[attr_name] = [int(v) for v in values]
                else:
                    rx.replace_const(node, index, values)


def reshape_runs(in_dims: list, out_dims: list) -> Optional[list[tuple[list[int], list[int]]]]:
    """Pair up runs of input and output axes whose products match (the reshape's factorization).

    Unknown dims (None) must face each other alone, as a batch axis does.
    Returns None when the shapes cannot be paired.
    """
    runs: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(in_dims) or j < len(out_dims):
        if i < len(in_dims) and j < len(out_dims) and (in_dims[i] is None or out_dims[j] is None):
            if in_dims[i] is None and out_dims[j] is None:
                runs.append(([i], [j]))
                i += 1
                j += 1
                continue
            return None
        ins, outs = [], []
        p_in = p_out = 1
        while True:
            if i < len(in_dims) and (p_in < p_out or not ins) and in_dims[i] is not None:
                p_in *= in_dims[i]
                ins.append(i)
                i += 1
            elif j < len(out_dims) and (p_out < p_in or not outs) and out_dims[j] is not None:
                p_out *= out_dims[j]
                outs.append(j)
                j += 1
            else:
                break
            if p_in == p_out and ins and outs:
                # absorb trailing unit axes into the run that ends here
                while i < len(in_dims) and in_dims[i] == 1 and (j >= len(out_dims) or out_dims[j] != 1):
                    ins.append(i)
                    i += 1
                while j < len(out_dims) and out_dims[j] == 1 and (i >= len(in_dims) or in_dims[i] != 1):
                    outs.append(j)
                    j += 1
                break
        if not ins and not outs:
            return None
        if p_in != p_out:
            return None
        runs.append((ins, outs))
    return runs


def _outermost(axes: list[int], dims: list) -> Optional[int]:
    for a in axes:
        if dims[a] != 1:
            return a
    return axes[0] if axes else None


class Reshape(Rule):
    """Reshape/Flatten as factorizations: 1:1 runs are identity, merges are Block maps.

    A merge (C x H x W -> C*H*W) ties channel c to its block of features; a split
    ties the channel to its outermost factor (heads of ``H*D -> H, D``).  The
    ShuffleNet Reshape-Transpose-Reshape is recognised as a whole (see
    :class:`ChannelShuffle`).
    """

    def _runs(self, node, cx):
        in_shape, out_shape = cx.shape(node.inputs[0]), cx.shape(node.outputs[0])
        if in_shape is None or out_shape is None:
            return None, None, None
        return reshape_runs(in_shape, out_shape), in_shape, out_shape

    def analyze(self, node, port, axis, cx):
        shuffle = ChannelShuffle.match(node, cx)
        if shuffle is not None:
            return shuffle.analyze(node, port, axis, cx)
        if port[0] == "in" and port[1] != 0:
            return frozen(f"{node.name} ({node.op}) shape computed from a channel tensor")
        runs, in_shape, out_shape = self._runs(node, cx)
        if runs is None:
            return frozen(f"{node.name} ({node.op}) shapes unknown or not a factorization")
        x, y = node.inputs[0], node.outputs[0]
        for ins, outs in runs:
            if (port[0] == "in" and axis in ins) or (port[0] == "out" and axis in outs):
                break
        else:
            return frozen(f"{node.name} ({node.op}) axis not found")
        if len(ins) > 1 and len(outs) > 1:
            return frozen(f"{node.name} ({node.op}) mixes axes {ins} into {outs}")
        if len(outs) == 1:  # identity or merge
            in_axis = axis if port[0] == "in" else _outermost(ins, in_shape)
            out_axis = outs[0]
            outer = int(np.prod([in_shape[a] for a in ins if a < in_axis], dtype=np.int64))
            inner = int(np.prod([in_shape[a] for a in ins if a > in_axis], dtype=np.int64))
            size = in_shape[in_axis]
            if size is None:
                return frozen(f"{node.name} ({node.op}) size unknown")
            imap = identity(size) if outer == inner == 1 else Block(size, out_shape[out_axis], outer, inner)
            return Effect(ties=[Tie(_space(x, in_axis), _space(y, out_axis), imap)])
        # split of one input axis into several output axes: tie to the outermost factor
        in_axis = ins[0]
        out_axis = _outermost(outs, out_shape)
        if port[0] == "out" and axis != out_axis:
            return frozen(f"{node.name} ({node.op}) inner factor of a split axis")
        inner = int(np.prod([out_shape[a] for a in outs if a > out_axis], dtype=np.int64))
        imap = Block(out_shape[out_axis], in_shape[in_axis], 1, inner)
        return Effect(ties=[Tie(_space(y, out_axis), _space(x, in_axis), imap)])

    def rewrite(self, node, rx):
        shuffle = rx.facts.get("shuffle", {}).get(node.name)
        if shuffle is not None:
            ChannelShuffle.rewrite_reshape(node, rx, shuffle)
            return
        in_shape, out_shape = node.inputs[0].shape, node.outputs[0].shape
        runs = reshape_runs(_static(in_shape), _static(out_shape))
        if runs is None:
            return
        new_out = list(_static(out_shape))
        changed = False
        for ins, outs in runs:
            new_in = [rx.new_dim(node.inputs[0], a, _static(in_shape)[a]) for a in ins]
            if new_in == [_static(in_shape)[a] for a in ins]:
                continue
            changed = True
            if len(outs) == 1:
                new_out[outs[0]] = int(np.prod(new_in, dtype=np.int64))
            else:
                o = _outermost(outs, _static(out_shape))
                others = int(np.prod([_static(out_shape)[a] for a in outs if a != o], dtype=np.int64))
                new_out[o] = int(new_in[0] // others)
        if changed:
            _write_shape(node, rx, new_out, _static(out_shape))


def _static(shape) -> list:
    return [d if isinstance(d, (int, np.integer)) and d >= 0 else None for d in (shape or [])]


def _write_shape(node: gs.Node, rx: RewriteContext, new_out: list, old_out: list) -> None:
    """Update the positive literal entries of a Reshape's shape operand (0 and -1 adapt by themselves)."""
    if node.op == "Flatten":
        return
    shape_tensor = node.inputs[1]
    values = const_values(shape_tensor)
    if values is not None:
        values = values.astype(np.int64).copy()
        for k, (new, old) in enumerate(zip(new_out, old_out)):
            if new is not None and new != old and values[k] > 0:
                values[k] = new
        rx.replace_const(node, 1, values)
        return
    producer = shape_tensor.inputs[0] if shape_tensor.inputs else None
    if producer is None or producer.op != "Concat":
        return
    offset = 0
    for i, piece in enumerate(producer.inputs):
        piece_values = const_values(piece)
        length = int(np.prod(piece.shape)) if piece.shape is not None and None not in _static(piece.shape) else 1
        if piece_values is not None:
            piece_values = np.atleast_1d(piece_values).astype(np.int64).copy()
            touched = False
            for k in range(len(piece_values)):
                pos = offset + k
                if pos < len(new_out) and new_out[pos] is not None and new_out[pos] != old_out[pos] \
                        and piece_values[k] > 0:
                    piece_values[k] = new_out[pos]
                    touched = True
            if touched:
                rx.replace_const(producer, i, piece_values.reshape(np.shape(const_values(piece))))
        offset += length


class ChannelShuffle(Rule):
    """ShuffleNet's Reshape [N,C,..]->[N,g,C/g,..], Transpose(g<->C/g), Reshape back: one permutation.

    Channels are removed column-wise (the same index inside every one of the g
    groups) so the shuffle of the remaining channels is again a shuffle.
    """

    def __init__(self, head: gs.Node, transpose: gs.Node, tail: gs.Node, axis: int, groups: int, size: int):
        self.head, self.transpose, self.tail = head, transpose, tail
        self.axis, self.groups, self.size = axis, groups, size

    @staticmethod
    def match(node: gs.Node, cx: AnalysisContext) -> Optional["ChannelShuffle"]:
        if node.op != "Reshape":
            return None
        cached = cx.facts.setdefault("shuffle_match", {})
        if node.name in cached:
            return cached[node.name]
        found = ChannelShuffle._match_head(node, cx) or ChannelShuffle._match_tail(node, cx)
        if found is not None:
            cached[found.head.name] = cached[found.tail.name] = found
            cx.facts.setdefault("shuffle", {})[found.head.name] = ("head", found)
            cx.facts["shuffle"][found.tail.name] = ("tail", found)
        else:
            cached[node.name] = None
        return found

    @staticmethod
    def _match_tail(node, cx):
        mid = node.inputs[0]
        if len(mid.inputs) != 1 or mid.inputs[0].op != "Transpose":
            return None
        t_in = mid.inputs[0].inputs[0]
        if len(t_in.inputs) != 1 or t_in.inputs[0].op != "Reshape":
            return None
        return ChannelShuffle._match_head(t_in.inputs[0], cx)

    @staticmethod
    def _match_head(head, cx):
        x, mid = head.inputs[0], head.outputs[0]
        in_shape, mid_shape = cx.shape(x), cx.shape(mid)
        if in_shape is None or mid_shape is None or len(mid_shape) != len(in_shape) + 1:
            return None
        if len(mid.outputs) != 1 or mid.outputs[0].op != "Transpose":
            return None
        transpose = mid.outputs[0]
        t_out = transpose.outputs[0]
        if len(t_out.outputs) != 1 or t_out.outputs[0].op != "Reshape":
            return None
        tail = t_out.outputs[0]
        out_shape = cx.shape(tail.outputs[0])
        if out_shape is None or len(out_shape) != len(in_shape):
            return None
        for axis in range(len(in_shape)):
            expected = list(range(len(mid_shape)))
            expected[axis], expected[axis + 1] = expected[axis + 1], expected[axis]
            if list(attr(transpose, "perm", [])) != expected:
                continue
            g, per = mid_shape[axis], mid_shape[axis + 1]
            if g is None or per is None or in_shape[axis] != g * per or out_shape[axis] != g * per:
                continue
            same = [a for a in range(len(in_shape)) if a != axis]
            if all(in_shape[a] == out_shape[a] for a in same):
                return ChannelShuffle(head, transpose, tail, axis, int(g), int(g * per))
        return None

    def analyze(self, node, port, axis, cx):
        if axis != self.axis:
            return frozen(f"{node.name} ({node.op}) shuffle on another axis")
        g, n = self.groups, self.size
        per = n // g
        i = np.arange(n, dtype=np.int64)
        a, b = i // per, i % per
        shuffled = b * g + a
        column_first = b * g  # every input of column b also ties to the column's first output
        src = np.concatenate([i, i])
        dst = np.concatenate([shuffled, column_first])
        x, y = self.head.inputs[0], self.tail.outputs[0]
        return Effect(ties=[Tie(_space(x, axis), _space(y, axis), Explicit(n, n, src, dst))])

    @staticmethod
    def rewrite_reshape(node, rx, entry):
        role, shuffle = entry
        kept = rx.kept(shuffle.head.inputs[0], shuffle.axis)
        if kept is None:
            return
        new_c = len(kept)
        if role == "head":
            old = _static(node.outputs[0].shape)
            new = list(old)
            new[shuffle.axis + 1] = new_c // shuffle.groups
        else:
            old = _static(node.outputs[0].shape)
            new = list(old)
            new[shuffle.axis] = new_c
        _write_shape(node, rx, new, old)


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
}

SUBGRAPH_OPS = ("If", "Loop", "Scan")


def rule_for(node: gs.Node) -> Optional[Rule]:
    """The rule of *node*'s op in the default domain; None freezes (custom domains included)."""
    if node.domain not in (None, "", "ai.onnx"):
        return None
    return RULES.get(node.op)
