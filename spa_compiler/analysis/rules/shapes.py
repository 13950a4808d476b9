"""Rules for ops that move channels between axes and tensors: layout, concat, split, slice, reshape."""
from __future__ import annotations


import numpy as np
import onnx_graphsurgeon as gs

from ...ir import attr, const_shape, const_values, input_at, int_list, normalize_axes, static_dims
from ..effects import NEUTRAL, PRODUCER, Effect, Tie, frozen
from ..maps import Affine, identity
from .base import Rule, axis_tie, param, space_of
from .shape_operand import write_shape


class Transpose(Rule):
    def analyze(self, node, port, axis, cx):
        rank = cx.rank(node.inputs[0])
        if rank is None:
            return frozen(f"{node.name} ({node.op}) rank unknown")
        perm = list(attr(node, "perm", list(range(rank))[::-1]))
        in_axis, out_axis = (axis, perm.index(axis)) if port[0] == "in" else (perm[axis], axis)
        return axis_tie(node, in_axis, out_axis, cx)


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
        return axis_tie(node, in_axis, out_axis, cx)


class Concat(Rule):
    """Concat: offset map along its axis, identity (and equal sizes) on the others."""

    def data(self, node: gs.Node) -> list[gs.Tensor]:
        """The concatenated tensors (QLinearConcat interleaves them with scales and zero points)."""
        return list(node.inputs)

    def _axis(self, node, cx):
        return normalize_axes([int(attr(node, "axis", 0))], cx.rank(node.outputs[0]) or 0)[0]

    def analyze(self, node, port, axis, cx):
        if cx.rank(node.outputs[0]) is None:
            return frozen(f"{node.name} ({node.op}) rank unknown")
        data = self.data(node)
        if port[0] == "in" and not any(t is node.inputs[port[1]] for t in data):
            return frozen(f"{node.name} ({node.op}) scale or zero point reached")
        cat_axis = self._axis(node, cx)
        y = node.outputs[0]
        effect = Effect()
        if axis == cat_axis:
            offset = 0
            total = cx.dim(y, axis)
            for tensor in data:
                size = cx.dim(tensor, axis)
                if size is None or total is None:
                    return frozen(f"{node.name} ({node.op}) sizes unknown")
                if isinstance(tensor, gs.Constant):
                    return frozen(f"{node.name} ({node.op}) concatenates a constant on the channel axis")
                if size:
                    effect.ties.append(Tie(space_of(tensor, axis), space_of(y, axis), Affine(size, total, offset, 1)))
                offset += size
            return effect
        size = cx.dim(y, axis)
        if size is None:
            return frozen(f"{node.name} ({node.op}) size unknown")
        for tensor in data:
            if isinstance(tensor, gs.Constant):
                return frozen(f"{node.name} ({node.op}) constant operand along a channel axis")
            effect.ties.append(Tie(space_of(tensor, axis), space_of(y, axis), identity(size)))
        return effect


class Split(Rule):
    """Split: each output is an offset window of the input along the split axis."""

    def analyze(self, node, port, axis, cx):
        x = node.inputs[0]
        if port[0] == "in" and port[1] != 0:
            return frozen(f"{node.name} ({node.op}) split sizes computed at run time")
        if cx.rank(x) is None:
            return frozen(f"{node.name} ({node.op}) rank unknown")
        split_axis = _split_axis(node, cx.rank(x))
        total = cx.dim(x, axis)
        if total is None:
            return frozen(f"{node.name} ({node.op}) size unknown")
        effect = Effect()
        if axis != split_axis:
            for y in node.outputs:
                effect.ties.append(Tie(space_of(x, axis), space_of(y, axis), identity(total)))
            return effect
        offset = 0
        for y in node.outputs:
            size = cx.dim(y, axis)
            if size is None:
                return frozen(f"{node.name} ({node.op}) output sizes unknown")
            if size:
                effect.ties.append(Tie(space_of(y, axis), space_of(x, axis), Affine(size, total, offset, 1)))
            offset += size
        return effect

    def rewrite(self, node, rx):
        axis = _split_axis(node, len(node.inputs[0].shape))
        kept = [rx.kept(y, axis) for y in node.outputs]
        if all(k is None for k in kept):
            return
        sizes = np.array([len(k) if k is not None else int(y.shape[axis])
                          for k, y in zip(kept, node.outputs)], dtype=np.int64)
        node.attrs.pop("num_outputs", None)
        if "split" in node.attrs:
            node.attrs["split"] = [int(s) for s in sizes]
        elif input_at(node, 1) is not None:
            rx.replace_const(node, 1, sizes)
        elif rx.facts.opset >= 13:
            node.inputs.append(gs.Constant(rx.fresh_name(f"{node.name}_split"), sizes))
        else:
            node.attrs["split"] = [int(s) for s in sizes]


def _split_axis(node: gs.Node, rank: int) -> int:
    return normalize_axes([int(attr(node, "axis", 0))], rank)[0]


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
            cx.facts.slices.setdefault(node.name, {})[axis] = (start, stop)
        return Effect(ties=[Tie(space_of(y, axis), space_of(x, axis), Affine(out, cx.dim(x, axis), start, 1))])

    def rewrite(self, node, rx):
        for axis, (start, stop) in rx.facts.slices.get(node.name, {}).items():
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


class Gather(Rule):
    """Gather: an embedding lookup produces channels; gathering other axes keeps them in place.

    With a constant 2-D table gathered on axis 0 (token embeddings) the
    output's last axis is the table's axis 1: a producer, like a layer's
    output.  With constant indices on an activation, every other axis maps
    through (shifted by the index rank); gathering along a channel axis freezes.
    """

    def seeds(self, node, cx):
        table = const_shape(node.inputs[0])
        y = node.outputs[0]
        if table is None or len(table) != 2 or int(attr(node, "axis", 0)) != 0 or cx.rank(y) is None:
            return []
        return [space_of(y, cx.rank(y) - 1)]

    def analyze(self, node, port, axis, cx):
        data, indices, y = node.inputs[0], node.inputs[1], node.outputs[0]
        rank_d, rank_i, rank_y = cx.rank(data), cx.rank(indices), cx.rank(y)
        if None in (rank_d, rank_i, rank_y):
            return frozen(f"{node.name} ({node.op}) ranks unknown")
        g = normalize_axes([int(attr(node, "axis", 0))], rank_d)[0]
        table = const_shape(data)
        if table is not None:
            if len(table) == 2 and g == 0 and port[0] == "out" and axis == rank_y - 1:
                return Effect(params=[param(node, 0, 1, PRODUCER, space_of(y, axis))])
            return frozen(f"{node.name} ({node.op}) gathers rows of a constant")
        if port[0] == "in" and port[1] == 1:
            return frozen(f"{node.name} ({node.op}) index tensor reached")
        if port[0] == "in":
            if axis == g:
                return frozen(f"{node.name} ({node.op}) gathers along the channel axis")
            out_axis = axis if axis < g else axis + rank_i - 1
            in_axis = axis
        else:
            if g <= axis < g + rank_i:
                return frozen(f"{node.name} ({node.op}) index axis reached")
            in_axis = axis if axis < g else axis - rank_i + 1
            out_axis = axis
        return axis_tie(node, in_axis, out_axis, cx)


class Expand(Rule):
    """Expand: axes the data already has keep their channels; broadcast (size-1) axes tie nothing."""

    def analyze(self, node, port, axis, cx):
        if port[0] == "in" and port[1] != 0:
            return NEUTRAL
        x, y = node.inputs[0], node.outputs[0]
        rx_, ry = cx.rank(x), cx.rank(y)
        if rx_ is None or ry is None:
            return frozen(f"{node.name} ({node.op}) ranks unknown")
        in_axis, out_axis = (axis, axis + ry - rx_) if port[0] == "in" else (axis - (ry - rx_), axis)
        if in_axis < 0 or cx.dim(x, in_axis) != cx.dim(y, out_axis):
            return NEUTRAL if port[0] == "out" else frozen(f"{node.name} ({node.op}) broadcasts axis {axis}")
        return axis_tie(node, in_axis, out_axis, cx)

    def rewrite(self, node, rx):
        x, y = node.inputs[0], node.outputs[0]
        old = static_dims(y.shape)
        shift = len(old) - len(x.shape or [])
        new = [rx.new_dim(x, k - shift, d) if k >= shift else d for k, d in enumerate(old)]
        if new != old:
            write_shape(node, rx, new, old)


class Tile(Rule):
    """Tile: axes repeated once keep their channels; a repeated channel axis freezes."""

    def analyze(self, node, port, axis, cx):
        if port[0] == "in" and port[1] != 0:
            return NEUTRAL
        repeats = const_values(node.inputs[1])
        if repeats is None:
            return frozen(f"{node.name} ({node.op}) repeats computed at run time")
        if int(np.asarray(repeats).reshape(-1)[axis]) != 1:
            return frozen(f"{node.name} ({node.op}) repeats the channel axis")
        return axis_tie(node, axis, axis, cx)
