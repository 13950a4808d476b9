"""Rules for ops that keep channels in place: elementwise, normalizations, pooling, reductions."""
from __future__ import annotations

from typing import Optional

import onnx_graphsurgeon as gs

from ...ir import attr, const_shape, const_values, input_at, int_list, normalize_axes
from ..effects import PASSIVE, Effect, Tie, frozen
from ..maps import group_blocks, identity
from .base import Rule, axis_tie, param, space_of


class Elementwise(Rule):
    """Numpy-broadcasting ops: output axis k ties every input axis of the same size aligned to it.

    Constant operands with a full-size axis there become passive parameter
    slices (per-channel scales, biases, PRelu slopes); size-1 axes broadcast.
    """

    def __init__(self, data_inputs: Optional[int] = None):
        self.data_inputs = data_inputs  # only the first N inputs broadcast (e.g. Clip's min/max are scalars)

    def operands(self, node: gs.Node) -> list[tuple[int, gs.Tensor]]:
        """(input position, tensor) of the operands that broadcast together."""
        inputs = node.inputs if self.data_inputs is None else node.inputs[: self.data_inputs]
        return list(enumerate(inputs))

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
        anchor = space_of(out, out_axis)
        effect = Effect()
        for i, tensor in self.operands(node):
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
            if const_shape(tensor) is not None:  # a constant, or a dequantized one
                effect.params.append(param(node, i, k, PASSIVE, anchor))
            else:
                effect.ties.append(Tie(space_of(tensor, k), anchor, identity(size)))
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
            anchor = space_of(out, axis)
            effect = Effect(ties=[Tie(space_of(x, axis), anchor, identity(size))])
            if axis == 1:
                for i in range(1, 1 + self.n_params):
                    if const_shape(node.inputs[i]) is None:
                        return frozen(f"{node.name} ({node.op}) parameters are not constants")
                    effect.params.append(param(node, i, 0, PASSIVE, anchor))
            return effect
        return frozen(f"{node.name} ({node.op}) statistic input reached")


class GroupNorm(Rule):
    """GroupNormalization: exact when whole groups go, so each group's channels form one atom.

    Removing part of a group would change that group's mean and variance; the
    group-wise map (the one grouped convs use) makes the group the smallest
    removable unit, and ``num_groups`` is rewritten.  Opset 18's per-group
    scale and bias (shape ``[num_groups]``) freeze.
    """

    def analyze(self, node, port, axis, cx):
        if port[0] == "in" and port[1] != 0:
            return frozen(f"{node.name} ({node.op}) scale or bias computed at run time")
        if axis == 0:
            return axis_tie(node, 0, 0, cx)
        if axis != 1:
            return frozen(f"{node.name} ({node.op}) normalizes over axis {axis}")
        size, groups = cx.dim(node.outputs[0], 1), int(attr(node, "num_groups", 1))
        if size is None or size % groups:
            return frozen(f"{node.name} ({node.op}) channel size unknown")
        if any(const_values(node.inputs[i]) is None or const_values(node.inputs[i]).shape != (size,) for i in (1, 2)):
            return frozen(f"{node.name} ({node.op}) scale and bias are not per-channel constants")
        out = space_of(node.outputs[0], 1)
        return Effect(ties=[Tie(space_of(node.inputs[0], 1), out, group_blocks(size, size, groups))],
                      params=[param(node, i, 0, PASSIVE, out) for i in (1, 2)])

    def rewrite(self, node, rx):
        kept = rx.kept(node.outputs[0], 1)
        if kept is not None:
            per_group = node.outputs[0].shape[1] // int(attr(node, "num_groups", 1))  # shapes are the old ones
            node.attrs["num_groups"] = int(len(kept) // per_group)


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


class Pool(Rule):
    """Pooling: channels and batch pass through; spatial axes are not channel spaces."""

    def analyze(self, node, port, axis, cx):
        if len(node.outputs) > 1 and node.outputs[1].outputs:
            return frozen(f"{node.name} ({node.op}) pooling indices are used")
        if port != ("in", 0) and port != ("out", 0):
            return frozen(f"{node.name} ({node.op}) unexpected operand")
        if axis > 1 and cx.dim(node.inputs[0], axis) != cx.dim(node.outputs[0], axis):
            return frozen(f"{node.name} ({node.op}) resizes axis {axis}")
        return axis_tie(node, axis, axis, cx)


class Resize(Pool):
    """Resize/Upsample: exact on axes it does not scale."""


class Pad(Rule):
    """Pad: identity on axes with no padding."""

    def analyze(self, node, port, axis, cx):
        if port != ("in", 0) and port != ("out", 0):
            return frozen(f"{node.name} ({node.op}) pads computed at run time")
        if cx.dim(node.inputs[0], axis) != cx.dim(node.outputs[0], axis):
            return frozen(f"{node.name} ({node.op}) pads axis {axis}")
        return axis_tie(node, axis, axis, cx)


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
                if cx.prune_hidden and keep and node.op in HIDDEN_STATISTICS:
                    return Effect(inexact=f"{node.name} ({node.op}) statistic over the channel axis changes")
                return frozen(f"{node.name} ({node.op}) reduces over the channel axis")
            out_axis = axis if keep else axis - sum(1 for a in axes if a < axis)
            in_axis = axis
        else:
            kept_axes = list(range(rank)) if keep else [a for a in range(rank) if a not in axes]
            in_axis = kept_axes[axis]
            if in_axis in axes:
                return frozen(f"{node.name} ({node.op}) reduced axis reached")
            out_axis = axis
        return axis_tie(node, in_axis, out_axis, cx)


HIDDEN_STATISTICS = ("ReduceMean", "ReduceSumSquare", "ReduceL2")


class LayerNorm(Rule):
    """LayerNormalization/RMSNormalization: exact on the axes it does not normalize.

    Removing channels of the normalized (hidden) axis changes the statistics;
    such groups freeze (residual-stream pruning is an opt-in, inexact mode).
    """

    def analyze(self, node, port, axis, cx):
        if any(o.outputs for o in node.outputs[1:]):
            return frozen(f"{node.name} ({node.op}) statistics outputs are used")
        if port[0] == "in" and port[1] != 0:
            return frozen(f"{node.name} ({node.op}) scale or bias computed at run time")
        rank = cx.rank(node.inputs[0])
        if rank is None:
            return frozen(f"{node.name} ({node.op}) rank unknown")
        first = normalize_axes([int(attr(node, "axis", -1))], rank)[0]
        if axis < first:
            return axis_tie(node, axis, axis, cx)
        if not cx.prune_hidden or axis != rank - 1 or first != rank - 1:
            return frozen(f"{node.name} ({node.op}) normalizes over the channel axis (see --prune-hidden)")
        effect = axis_tie(node, axis, axis, cx)
        out = space_of(node.outputs[0], axis)
        for i in (1, 2):
            if input_at(node, i) is not None:
                if const_shape(node.inputs[i]) is None:
                    return frozen(f"{node.name} ({node.op}) scale or bias computed at run time")
                effect.params.append(param(node, i, 0, PASSIVE, out))
        effect.inexact = f"{node.name} ({node.op}) statistics over the pruned axis change"
        return effect
