"""Shape operands (of Reshape, Expand): where their literal entries live and how to update them.

Shared by the Reshape, channel-shuffle and Expand rules, so none of them imports another's module.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import const_values, static_dims
from ..context import RewriteContext


def _shape_source(tensor: gs.Tensor, depth: int = 4) -> Optional[gs.Node]:
    """The node that assembles a shape operand, looking through exporters' wrappers.

    TorchScript writes ``expand`` shapes as ``Where(Equal(s, -1), ones, Reshape(Concat(...)))``;
    the literal entries live in that Concat.
    """
    node = tensor.inputs[0] if tensor.inputs else None
    while node is not None and depth > 0:
        if node.op in ("Reshape", "Cast", "Identity"):
            src = node.inputs[0]
        elif node.op == "Where":
            data = [t for t in node.inputs[1:] if const_values(t) is None]
            if len(data) != 1:
                return node
            src = data[0]
        else:
            return node
        node = src.inputs[0] if src.inputs else None
        depth -= 1
    return node


def concat_pieces(shape_tensor: gs.Tensor):
    """(concat node, [(input index, piece, first position)]) of a shape built by a Concat, else (None, [])."""
    producer = _shape_source(shape_tensor)
    if producer is None or producer.op != "Concat":
        return None, []
    pieces, offset = [], 0
    for i, piece in enumerate(producer.inputs):
        pieces.append((i, piece, offset))
        offset += int(np.prod(piece.shape)) if piece.shape is not None and None not in static_dims(piece.shape) else 1
    return producer, pieces


def write_shape(node: gs.Node, rx: RewriteContext, new_out: list, old_out: list, index: int = 1) -> None:
    """Update the literal entries of a shape operand (Reshape, Expand) that held old channel counts.

    Entries 0 and -1 adapt by themselves; a shape built at run time by a
    ``Concat`` has its constant pieces rewritten in place (a fresh copy each).
    """
    if node.op == "Flatten":
        return
    shape_tensor = node.inputs[index]
    values = const_values(shape_tensor)
    if values is not None:
        rx.replace_const(node, index, _updated(values, 0, new_out, old_out, force=True))
        return
    producer, pieces = concat_pieces(shape_tensor)
    for i, piece, offset in pieces:
        piece_values = const_values(piece)
        if piece_values is not None:
            updated = _updated(piece_values, offset, new_out, old_out)
            if updated is not None:
                rx.replace_const(producer, i, updated)


def _updated(values: np.ndarray, offset: int, new_out: list, old_out: list, force: bool = False):
    """*values* (shape entries ``offset...``) with every entry that held an old dim set to the new one.

    Returns None when nothing changed (unless *force*); entries 0 and -1 are left alone.
    """
    flat = np.atleast_1d(values).astype(np.int64).copy()
    touched = False
    for k in range(len(flat)):
        pos = offset + k
        if pos < len(new_out) and new_out[pos] is not None and new_out[pos] != old_out[pos] \
                and flat[k] == old_out[pos]:
            flat[k] = new_out[pos]
            touched = True
    return flat.reshape(np.shape(values)) if touched or force else None
