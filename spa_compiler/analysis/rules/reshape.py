"""Reshape and Flatten as factorizations of axes, over static and symbolic dims.

A reshape pairs runs of input axes with runs of output axes whose products
match.  A 1:1 run is an identity; a merge (``C x H x W -> C*H*W``) ties each
channel to its block of features; a split ties the channel to one factor:
the outermost non-unit one (the heads of ``H*D -> H, D``).  Symbolic dims
(``batch``, ``seq``, ``batch*seq``) take part as symbols, so the dynamic
reshapes transformer exports are full of still factorize.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional, Union

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import const_values, static_dims
from ..context import RewriteContext
from ..effects import Effect, Tie, frozen
from ..maps import Block, identity
from .base import Rule, space_of
from .shape_operand import concat_pieces, write_shape
from .shuffle import ChannelShuffle

Dim = Union[int, str, None]


class _Product:
    """A product of dims: an integer coefficient times a multiset of symbols."""

    def __init__(self, coef: int = 1, symbols: Optional[Counter] = None):
        self.coef, self.symbols = coef, symbols or Counter()

    def times(self, dim: Dim) -> Optional["_Product"]:
        if isinstance(dim, (int, np.integer)):
            return _Product(self.coef * int(dim), self.symbols.copy())
        if isinstance(dim, str):
            symbols = self.symbols.copy()
            coef = self.coef
            for part in dim.replace(" ", "").split("*"):
                if part.isdigit():
                    coef *= int(part)
                elif part.isidentifier():
                    symbols[part] += 1
                else:
                    return None  # sums, quotients: not a product we can reason about
            return _Product(coef, symbols)
        return None

    def divides(self, other: "_Product") -> bool:
        return other.coef % self.coef == 0 and not (self.symbols - other.symbols)

    def smaller(self, other: "_Product") -> bool:
        """Strictly smaller: divides it, or (all static) is numerically less: this side grows next."""
        if self == other:
            return False
        if not self.symbols and not other.symbols:
            return self.coef < other.coef
        return self.divides(other)

    def __eq__(self, other) -> bool:  # noqa: D105
        return self.coef == other.coef and self.symbols == other.symbols


def reshape_runs(in_dims: list, out_dims: list) -> Optional[list[tuple[list[int], list[int]]]]:
    """Pair up runs of input and output axes whose products match; None when they cannot be paired."""
    runs: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(in_dims) or j < len(out_dims):
        if i < len(in_dims) and j < len(out_dims) and in_dims[i] is None and out_dims[j] is None:
            runs.append(([i], [j]))  # unknown dims facing each other alone, as a batch axis does
            i, j = i + 1, j + 1
            continue
        ins, outs = [], []
        p_in, p_out = _Product(), _Product()
        while not (ins and outs and p_in == p_out):
            take_in = i < len(in_dims) and (not ins or (p_in.smaller(p_out)))
            take_out = j < len(out_dims) and (not outs or (p_out.smaller(p_in)))
            if take_in and (not take_out or not ins):
                p_in = p_in.times(in_dims[i])
                ins.append(i)
                i += 1
            elif take_out:
                p_out = p_out.times(out_dims[j])
                outs.append(j)
                j += 1
            else:
                return None
            if p_in is None or p_out is None:
                return None
        # trailing unit axes join the run that ends here
        while i < len(in_dims) and in_dims[i] == 1 and (j >= len(out_dims) or out_dims[j] != 1):
            ins.append(i)
            i += 1
        while j < len(out_dims) and out_dims[j] == 1 and (i >= len(in_dims) or in_dims[i] != 1):
            outs.append(j)
            j += 1
        runs.append((ins, outs))
    return runs


LONE_DYNAMIC = "lone_dynamic_dim"


def same_lone_dynamic_dim(in_dims: list, out_dims: list) -> tuple[list, list]:
    """Give the one dynamic dim of each side the same name when the static dims multiply alike.

    Exporters name the batch afresh across a reshape (tf2onnx's ``unk__12 x 32
    -> unk__0 x 32 x 1 x 1``, paddle2onnx's ``DynamicDimension.0`` into a
    ``[-1, 512]`` flatten): both sides hold as many elements, so when the
    static parts have equal products the two dynamic dims are equal too.  The
    shared name is also one the factorization can parse (``DynamicDimension.0``
    is not).
    """
    dyn_in = [i for i, d in enumerate(in_dims) if not isinstance(d, (int, np.integer))]
    dyn_out = [j for j, d in enumerate(out_dims) if not isinstance(d, (int, np.integer))]
    if len(dyn_in) != 1 or len(dyn_out) != 1:
        return in_dims, out_dims
    static_in = _int_prod([d for i, d in enumerate(in_dims) if i != dyn_in[0]])
    if static_in == 0 or static_in != _int_prod([d for j, d in enumerate(out_dims) if j != dyn_out[0]]):
        return in_dims, out_dims
    in_dims[dyn_in[0]] = out_dims[dyn_out[0]] = LONE_DYNAMIC
    return in_dims, out_dims


def factorization(in_dims: list, out_dims: list) -> tuple[list, list, Optional[list[tuple[list[int], list[int]]]]]:
    """Copies of both shapes with a lone renamed dynamic dim matched, and their runs (None: not a factorization).

    Analysis and rewrite both read a Reshape through this, so they agree on
    which dims are the same.
    """
    in_dims, out_dims = same_lone_dynamic_dim(list(in_dims), list(out_dims))
    return in_dims, out_dims, reshape_runs(in_dims, out_dims)


def outermost(axes: list[int], dims: list) -> Optional[int]:
    """The first axis of a run whose size is not 1 (the factor a channel ties to)."""
    for a in axes:
        if dims[a] != 1:
            return a
    return axes[0] if axes else None


def _int_prod(dims: list) -> Optional[int]:
    if any(not isinstance(d, (int, np.integer)) for d in dims):
        return None
    return int(np.prod(dims, dtype=np.int64)) if dims else 1


def split_factor(node: gs.Node, outs: list[int], out_shape: list, cx) -> Optional[int]:
    """The output axis a split channel axis ties to: the outermost non-unit factor not selected apart.

    ``[3*E] -> [3, H, D]`` (fused QKV) is followed by a Gather/Split/Slice that
    picks q, k and v out of the ``3`` axis: that factor is a selector, so the
    channel ties to the heads ``H`` instead (remembered for the rewrite).
    """
    cache = cx.facts.split_factor
    if node.name in cache:
        return cache[node.name]
    choice = None
    for a in (reversed(outs) if cx.head_dims else outs):  # head dims: the innermost factor
        if out_shape[a] == 1:
            continue
        if not _is_selector(node.outputs[0], a, cx):
            choice = a
            break
    cache[node.name] = choice
    return choice


_SELECTORS = ("Gather", "Split", "Slice")
_AXIS_MOVERS = ("Transpose", "Unsqueeze", "Squeeze")


def _is_selector(tensor: gs.Tensor, axis: int, cx, depth: int = 6) -> bool:
    """True when every path from *tensor* picks entries of *axis* apart by constant indices."""
    if depth == 0 or not tensor.outputs:
        return False
    for consumer in tensor.outputs:
        if consumer.op in _SELECTORS:
            if not _selects_axis(consumer, axis, cx):
                return False
        elif consumer.op in _AXIS_MOVERS and consumer.inputs[0] is tensor:
            moved = _moved_axis(consumer, axis, cx)
            if moved is None or not _is_selector(consumer.outputs[0], moved, cx, depth - 1):
                return False
        else:
            return False
    return True


def _selects_axis(node: gs.Node, axis: int, cx) -> bool:
    from ...ir import attr, int_list, normalize_axes

    rank = cx.rank(node.inputs[0]) or 0
    if node.op == "Gather":
        return normalize_axes([int(attr(node, "axis", 0))], rank)[0] == axis and \
            const_values(node.inputs[1]) is not None
    if node.op == "Split":
        return normalize_axes([int(attr(node, "axis", 0))], rank)[0] == axis
    axes = int_list(node, "axes", 3)
    return axes is not None and axis in normalize_axes(axes, rank)


def _moved_axis(node: gs.Node, axis: int, cx) -> Optional[int]:
    from ...ir import attr, int_list, normalize_axes

    rank = cx.rank(node.inputs[0])
    if rank is None:
        return None
    if node.op == "Transpose":
        perm = list(attr(node, "perm", list(range(rank))[::-1]))
        return perm.index(axis)
    axes = int_list(node, "axes", 1)
    if axes is None:
        return None
    if node.op == "Unsqueeze":
        axes = normalize_axes(axes, rank + len(axes))
        out = [a for a in range(rank + len(axes)) if a not in axes]
        return out[axis]
    axes = normalize_axes(axes, rank)
    if axis in axes:
        return None
    return axis - sum(1 for a in axes if a < axis)


class Reshape(Rule):
    """Reshape/Flatten; the ShuffleNet Reshape-Transpose-Reshape is recognised as a whole."""

    def analyze(self, node, port, axis, cx):
        shuffle = ChannelShuffle.match(node, cx)
        if shuffle is not None:
            return shuffle.analyze(node, port, axis, cx)
        if port[0] == "in" and port[1] != 0:
            return frozen(f"{node.name} ({node.op}) shape computed from a channel tensor")
        in_shape, out_shape, runs = cx.raw_shape(node.inputs[0]), cx.raw_shape(node.outputs[0]), None
        if in_shape is not None and out_shape is not None:
            in_shape, out_shape, runs = factorization(in_shape, out_shape)
        if runs is None:
            return frozen(f"{node.name} ({node.op}) shapes unknown or not a factorization")
        x, y = node.inputs[0], node.outputs[0]
        for ins, outs in runs:
            if (port[0] == "in" and axis in ins) or (port[0] == "out" and axis in outs):
                break
        else:
            return frozen(f"{node.name} ({node.op}) axis not found")
        if len(ins) > 1 and len(outs) > 1:
            return _fold_heads_into_batch(node, ins, outs, in_shape, out_shape, port, axis, cx)
        if len(outs) == 1:  # identity or merge
            in_axis = axis if port[0] == "in" else outermost(ins, in_shape)
            out_axis = outs[0]
            outer = _int_prod([in_shape[a] for a in ins if a < in_axis])
            inner = _int_prod([in_shape[a] for a in ins if a > in_axis])
            size, total = in_shape[in_axis], out_shape[out_axis]
            if outer is None or inner is None or not isinstance(size, (int, np.integer)):
                return frozen(f"{node.name} ({node.op}) merges the channel axis with dynamic axes")
            imap = identity(size) if outer == inner == 1 else Block(size, int(total), outer, inner)
            return Effect(ties=[Tie(space_of(x, in_axis), space_of(y, out_axis), imap)])
        in_axis = ins[0]
        period = cx.facts.periodic.get(in_shape[in_axis])
        if period is not None:  # [k*batch] -> [batch, k]: the heads come back out of the batch
            out_axis = next((a for a in outs if out_shape[a] == period), None)
            if out_axis is None or (port[0] == "out" and axis != out_axis):
                return frozen(f"{node.name} ({node.op}) unfolds a folded axis unexpectedly")
            cx.facts.split_factor[node.name] = out_axis
            cx.facts.unfold[node.name] = (in_axis, out_axis)
            return Effect(ties=[Tie(space_of(x, in_axis), space_of(y, out_axis), identity(period))])
        out_axis = split_factor(node, outs, out_shape, cx)
        if out_axis is None:
            return frozen(f"{node.name} ({node.op}) every factor of the split channel axis is selected apart")
        if port[0] == "out" and axis != out_axis:
            return frozen(f"{node.name} ({node.op}) other factor of a split axis")
        outer = _int_prod([out_shape[a] for a in outs if a < out_axis])
        inner = _int_prod([out_shape[a] for a in outs if a > out_axis])
        if outer is None or inner is None or not isinstance(out_shape[out_axis], (int, np.integer)):
            return frozen(f"{node.name} ({node.op}) splits the channel axis into dynamic axes")
        imap = Block(int(out_shape[out_axis]), int(in_shape[in_axis]), outer, inner)
        return Effect(ties=[Tie(space_of(y, out_axis), space_of(x, in_axis), imap)])

    def rewrite(self, node, rx):
        shuffle = rx.facts.shuffle.get(node.name)
        if shuffle is not None:
            ChannelShuffle.rewrite_reshape(node, rx, shuffle)
            return
        in_shape, out_shape = list(node.inputs[0].shape or []), list(node.outputs[0].shape or [])
        fold = rx.facts.fold.get(node.name)
        if fold is not None:
            kept = rx.kept(node.outputs[0], fold[0])
            if kept is not None:
                rewrite_folded_factor(node, rx, fold[0], fold[1], len(kept))
            return
        unfold = rx.facts.unfold.get(node.name)
        if unfold is not None:
            kept = rx.kept(node.inputs[0], unfold[0])
            if kept is not None:
                new_out = list(static_dims(out_shape))
                new_out[unfold[1]] = len(kept)
                write_shape(node, rx, new_out, static_dims(out_shape))
            return
        in_shape, out_shape, runs = factorization(in_shape, out_shape)
        if runs is None:
            return
        new_out = list(out_shape)
        for ins, outs in runs:
            new_in = [rx.new_dim(node.inputs[0], a, in_shape[a]) for a in ins]
            if new_in == [in_shape[a] for a in ins]:
                continue
            if len(outs) == 1:
                new_out[outs[0]] = _int_prod(new_in)
            else:
                o = rx.facts.split_factor.get(node.name, outermost(outs, out_shape))
                others = _int_prod([out_shape[a] for a in outs if a != o])
                new_out[o] = None if others is None or new_in[0] is None else int(new_in[0] // others)
        if new_out != out_shape:
            write_shape(node, rx, static_dims(new_out), static_dims(out_shape))


def _fold_heads_into_batch(node, ins, outs, in_shape, out_shape, port, axis, cx) -> Effect:
    """``[.., batch, H*D] -> [.., H*batch, D]``: torch.nn.MultiheadAttention folds heads into the batch.

    The folded axis becomes a *periodic* space of size H (position ``b*H + h`` is
    head h of sample b), registered by its symbolic dim name so every tensor
    that carries the same ``H*batch`` axis sees H channels there.
    """
    blame = frozen(f"{node.name} ({node.op}) mixes axes {ins} into {outs}")
    if len(ins) != 2 or len(outs) != 2:
        return blame
    (b, e), (f, d) = ins, outs
    batch, folded = _Product().times(in_shape[b]), _Product().times(out_shape[f])
    if batch is None or folded is None or not batch.symbols or batch.coef != 1 or folded.symbols != batch.symbols:
        return blame
    heads, width, head_dim = folded.coef, in_shape[e], out_shape[d]
    if not all(isinstance(v, (int, np.integer)) for v in (width, head_dim)) or heads * head_dim != width:
        return blame
    if (port[0] == "in" and axis != e) or (port[0] == "out" and axis != f):
        return frozen(f"{node.name} ({node.op}) batch or head-dim axis of a head fold")
    cx.facts.periodic[out_shape[f]] = heads
    cx.facts.fold[node.name] = (f, heads)
    imap = Block(heads, int(width), 1, int(head_dim))
    return Effect(ties=[Tie(space_of(node.outputs[0], f), space_of(node.inputs[0], e), imap)])


def rewrite_folded_factor(node: gs.Node, rx: RewriteContext, axis: int, old: int, new: int) -> None:
    """Rewrite the head count inside a run-time shape entry such as ``Unsqueeze(Mul(batch, H))``."""
    _, pieces = concat_pieces(node.inputs[1])
    for _, piece, offset in reversed(pieces):
        if offset <= axis:
            _replace_factor(piece, rx, old, new, depth=4)
            return


def _replace_factor(tensor: gs.Tensor, rx: RewriteContext, old: int, new: int, depth: int) -> None:
    if depth == 0 or not tensor.inputs:
        return
    node = tensor.inputs[0]
    if node.op == "Mul":
        for i, operand in enumerate(node.inputs):
            values = const_values(operand)
            if values is not None and values.size == 1 and int(values.reshape(-1)[0]) == old:
                rx.replace_const(node, i, np.full_like(values, new))
                return
    if node.op in ("Unsqueeze", "Cast", "Mul", "Reshape"):
        _replace_factor(node.inputs[0], rx, old, new, depth - 1)
