"""What each graph input is, read from the graph once, so data-free inputs can look like real ones.

An analysis (it changes nothing): the input spec (:mod:`.inputspec`) takes these facts with the dims,
and every stage that feeds the model (the dense run, the fidelity measurement, ``--max-error`` probes,
the OBSPA statistics) draws its data-free values from that one spec.

Noise that looks nothing like a model's inputs gives OBSPA Hessians of nothing it will see: token ids
drawn from 0..7 exercise 8 rows of a 139-row embedding, a float id input (Keras exports char ids as
floats and casts them) fed N(0,1) indexes rows -2..2 (negative ids wrap to the end of the table).
This module classifies every input:

- ``ids``: integer inputs, and float inputs only ever cast to integers, that reach a ``Gather`` as its
  indices (through Cast, shape ops, TF's negative-index fix-ups, or a Gather selecting rows of the id
  tensor itself); ``high`` is the smallest table they index, so ids are drawn in ``[0, high)``;
- ``mask``: integer/bool inputs named like an attention mask (ones, with a random padded tail);
- ``int`` / ``bool`` / ``float`` otherwise (float layouts, images NCHW/NHWC and spectrograms, follow
  from the chosen dims: :mod:`.inputvalues`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

IDS, MASK, INT, BOOL, FLOAT = "ids", "mask", "int", "bool", "float"
# ops through which an index tensor stays an index tensor (values or positions only moved or cast)
INDEX_PRESERVING = {"Cast", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Transpose", "Slice",
                    "Split", "Concat", "Expand", "Tile", "Add", "Sub", "Mul", "Where", "Max", "Min", "Abs",
                    "Mod", "Clip"}
INTEGER_TYPES = {np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                                       np.uint64)}
MASK_NAMES = ("mask",)


@dataclass(frozen=True)
class InputFacts:
    """One graph input's kind and, for ids, the exclusive upper bound of its values."""

    kind: str
    high: Optional[int] = None


def is_integer(dtype) -> bool:
    try:
        return np.dtype(dtype) in INTEGER_TYPES
    except TypeError:
        return False


def default_kind(dtype) -> str:
    """The kind of an input the graph says nothing more about: by its dtype."""
    dtype = np.dtype(dtype or np.float32)
    return BOOL if dtype == np.bool_ else INT if is_integer(dtype) else FLOAT


def _table_rows(data, axis: int) -> Optional[int]:
    """Rows of a Gather's table: a constant, or a Constant node's value (graphs not yet folded)."""
    if isinstance(data, gs.Constant):
        shape = data.shape
    elif len(data.inputs) == 1 and data.inputs[0].op == "Constant" and "value" in data.inputs[0].attrs:
        shape = getattr(data.inputs[0].attrs["value"], "shape", None)
    else:
        return None
    return int(shape[axis]) if shape is not None and len(shape) > axis else None


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
                if indices is current:
                    rows = _table_rows(data, int(node.attrs.get("axis", 0)))
                    if rows:
                        bounds.append(rows)
                elif data is current:
                    todo.extend(node.outputs)  # rows of the id tensor: still ids
            elif node.op in INDEX_PRESERVING:
                todo.extend(node.outputs)
    return min(bounds) if bounds else None


def _only_cast_to_integer(tensor: gs.Variable) -> bool:
    readers = tensor.outputs
    return bool(readers) and all(n.op == "Cast" and is_integer(onnx_dtype(n.attrs.get("to"))) for n in readers)


def onnx_dtype(code) -> Optional[np.dtype]:
    """numpy dtype of an ONNX TensorProto type code (None when unknown)."""
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(int(code)))
    except (TypeError, ValueError, KeyError):
        return None


def classify(tensor: gs.Variable) -> InputFacts:
    """The facts of one graph input (see the module docstring)."""
    kind = default_kind(tensor.dtype)
    if kind in (INT, BOOL) and any(word in tensor.name.lower() for word in MASK_NAMES):
        return InputFacts(MASK)
    if kind == INT or (kind == FLOAT and _only_cast_to_integer(tensor)):
        high = _index_bound(tensor)
        if high:
            return InputFacts(IDS, high)
    return InputFacts(kind)


def input_facts(graph: gs.Graph) -> dict[str, InputFacts]:
    """Every graph input's facts, by name."""
    return {tensor.name: classify(tensor) for tensor in graph.inputs}
