"""The ShuffleNet channel shuffle recognised as one permutation."""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import attr, static_dims
from ..context import AnalysisContext
from ..effects import Effect, Tie, frozen
from ..maps import Explicit
from .base import Rule, space_of
from .shape_operand import write_shape


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
        cached = cx.facts.shuffle_match
        if node.name in cached:
            return cached[node.name]
        found = ChannelShuffle._match_head(node, cx) or ChannelShuffle._match_tail(node, cx)
        if found is not None:
            cached[found.head.name] = cached[found.tail.name] = found
            cx.facts.shuffle[found.head.name] = ("head", found)
            cx.facts.shuffle[found.tail.name] = ("tail", found)
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
        return Effect(ties=[Tie(space_of(x, axis), space_of(y, axis), Explicit(n, n, src, dst))])

    @staticmethod
    def rewrite_reshape(node, rx, entry):
        role, shuffle = entry
        kept = rx.kept(shuffle.head.inputs[0], shuffle.axis)
        if kept is None:
            return
        new_c = len(kept)
        if role == "head":
            old = static_dims(node.outputs[0].shape)
            new = list(old)
            new[shuffle.axis + 1] = new_c // shuffle.groups
        else:
            old = static_dims(node.outputs[0].shape)
            new = list(old)
            new[shuffle.axis] = new_c
        write_shape(node, rx, new, old)
