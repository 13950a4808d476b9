"""What each graph input is, read from the graph, so data-free inputs can look like real ones.

Noise that looks nothing like a model's inputs gives OBSPA Hessians of nothing it will see: token ids
drawn from 0..7 exercise 8 rows of a 139-row embedding, a float id input (Keras exports char ids as
floats and casts them) fed N(0,1) indexes rows -2..2 (negative ids wrap to the end of the table),
a sequence of length 1 pads a 1-D convolution's every window with zeros, and an NHWC image was not
recognized as an image.  This module classifies every input:

- ``ids``: integer inputs, and float inputs only ever cast to integers, that reach a ``Gather`` as its
  indices (through Cast, shape ops, TF's negative-index fix-ups, or a Gather selecting rows of the id
  tensor itself); ``high`` is the smallest table they index, so ids are drawn in ``[0, high)``;
- ``mask``: integer/bool inputs named like an attention mask (ones, with a random padded tail);
- ``float`` / ``int`` otherwise (float layouts, images NCHW/NHWC and spectrograms, are read from the
  feed's shape by :mod:`.noise`).

Symbolic dimensions that are never a leading (batch) axis are sequence lengths: data-free feeds give
them ``SEQUENCE_LENGTH`` instead of 1 (``SEQUENCE_LENGTH`` x batch when no input has a batch axis to
grow, as a CNN exported with batch 1: one long sequence instead of a batch of short ones).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

SEQUENCE_LENGTH = 32
# ops through which an index tensor stays an index tensor (values or positions only moved or cast)
INDEX_PRESERVING = {"Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Transpose", "Slice",
                    "Split", "Concat", "Expand", "Tile", "Add", "Sub", "Mul", "Where", "Max", "Min", "Abs",
                    "Mod", "Clip"}
INTEGER_TYPES = {np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                                       np.uint64)}
MASK_NAMES = ("mask",)


@dataclass(frozen=True)
class InputKind:
    """One graph input's kind and, for ids, the exclusive upper bound of its values."""

    kind: str
    high: Optional[int] = None


def _is_integer(dtype) -> bool:
    try:
        return np.dtype(dtype) in INTEGER_TYPES
    except TypeError:
        return False


def _index_bound(tensor: gs.Variable, limit: int = 64) -> Optional[int]:
    """Smallest table size reached by *tensor* as Gather indices, following index-preserving ops."""
    bounds, seen, todo = [], set(), [tensor]
    while todo and len(seen) < limit:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for node in current.outputs:
            if node.op in ("Gather", "GatherElements", "GatherND") and len(node.inputs) > 1:
                data, indices = node.inputs[0], node.inputs[1]
                if indices is current and isinstance(data, gs.Constant):
                    axis = int(node.attrs.get("axis", 0))
                    bounds.append(int(data.shape[axis]))
                elif data is current:
                    todo.extend(node.outputs)  # rows of the id tensor: still ids
            elif node.op in INDEX_PRESERVING:
                todo.extend(node.outputs)
    return min(bounds) if bounds else None


def _only_cast_to_integer(tensor: gs.Variable) -> bool:
    readers = tensor.outputs
    return bool(readers) and all(n.op == "Cast" and _is_integer(onnx_dtype(n.attrs.get("to"))) for n in readers)


def onnx_dtype(code) -> Optional[np.dtype]:
    """numpy dtype of an ONNX TensorProto type code (None when unknown)."""
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(int(code)))
    except (TypeError, ValueError, KeyError):
        return None


def classify(tensor: gs.Variable) -> InputKind:
    """The kind of one graph input (see the module docstring)."""
    dtype = tensor.dtype
    integer = _is_integer(dtype)
    if integer or np.dtype(dtype or np.float32) == np.bool_:
        if any(word in tensor.name.lower() for word in MASK_NAMES):
            return InputKind("mask")
        if integer:
            high = _index_bound(tensor)
            return InputKind("ids", high) if high else InputKind("int")
        return InputKind("float")
    if _only_cast_to_integer(tensor):
        high = _index_bound(tensor)
        if high:
            return InputKind("ids", high)
    return InputKind("float")


def input_kinds(graph: gs.Graph) -> dict[str, InputKind]:
    """Every graph input's kind, by name."""
    return {tensor.name: classify(tensor) for tensor in graph.inputs}


def sequence_dims(graph: gs.Graph, batch: int) -> dict[str, int]:
    """Sizes for symbolic dims: *batch* for any that leads an input, ``SEQUENCE_LENGTH`` for the rest."""
    leading = {t.shape[0] for t in graph.inputs if t.shape and isinstance(t.shape[0], str)}
    length = SEQUENCE_LENGTH if leading else SEQUENCE_LENGTH * batch
    dims = {}
    for tensor in graph.inputs:
        for d in tensor.shape or []:
            if isinstance(d, str):
                dims[d] = batch if d in leading else length
    return dims
