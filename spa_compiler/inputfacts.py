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
  tensor itself); ``high`` is the smallest table they index, so ids are drawn in ``[0, high)``, and
  ``weights`` how often each row is drawn (:func:`row_weights`: rows a trained model never saw are not);
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
UNUSED_ROW = 1e-6  # an embedding row below this fraction of the largest is one the model never used
LAYOUT_OPS = {"Identity", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}  # values only moved
INTEGER_TYPES = {np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
                                       np.uint64)}
MASK_NAMES = ("mask",)


@dataclass(frozen=True)
class InputFacts:
    """One graph input's kind and, for ids, the exclusive upper bound of its values."""

    kind: str
    high: Optional[int] = None
    weights: Optional[tuple[float, ...]] = None  # ids only: probability of each id in [0, high)


def is_integer(dtype) -> bool:
    try:
        return np.dtype(dtype) in INTEGER_TYPES
    except TypeError:
        return False


def default_kind(dtype) -> str:
    """The kind of an input the graph says nothing more about: by its dtype."""
    dtype = np.dtype(dtype or np.float32)
    return BOOL if dtype == np.bool_ else INT if is_integer(dtype) else FLOAT


def _table(data):
    """A Gather's constant table: a constant, or a Constant node's value (graphs not yet folded); else None."""
    if isinstance(data, gs.Constant):
        return data
    if len(data.inputs) == 1 and data.inputs[0].op == "Constant" and "value" in data.inputs[0].attrs:
        return data.inputs[0].attrs["value"]
    return None


def _table_rows(data, axis: int) -> Optional[int]:
    shape = getattr(_table(data), "shape", None)
    return int(shape[axis]) if shape is not None and len(shape) > axis else None


def _index_bound(tensor: gs.Variable, limit: int = 64) -> Optional[tuple[int, Optional[tuple[float, ...]]]]:
    """(rows, row weights) of the smallest table reached by *tensor* as Gather indices, following
    index-preserving ops; None when it reaches none."""
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
                        bounds.append((rows, len(bounds), node))
                elif data is current:
                    todo.extend(node.outputs)  # rows of the id tensor: still ids
            elif node.op in INDEX_PRESERVING:
                todo.extend(node.outputs)
    if not bounds:
        return None
    rows, _, node = min(bounds, key=lambda b: b[:2])
    return rows, row_weights(node) if node.op == "Gather" else None


def row_weights(gather: gs.Node) -> Optional[tuple[float, ...]]:
    """Each id's probability, in proportion to the norm of its embedding row, where the table shows that
    its rows grew with use (some rows are exactly zero); None (every id alike) otherwise.

    Trained from zero-ish rows with weight decay (or rounded to int8), an embedding keeps the rows of
    tokens the model never saw at zero, the padding row is zero by construction, and the most frequent
    tokens get the largest rows.  The rawi diacritizers have 164 zero rows of 302 (emoji, Latin letters,
    ``<PAD>``, ``<UNK>``) and their 30 largest are exactly space and the Arabic letters: uniform ids fed
    mostly tokens no real input holds, so OBSPA's statistics and the ``--max-error`` measurement described
    text that never occurs (rawi: ``--max-error 0.05`` measured 0.05 on its data-free inputs and 0.11 on
    real sentences; with ids drawn by row norm 0.04).  A table with no zero row gives no such evidence
    (the Keras taggers' rows all start random): drawn by norm, the OSKut refiners' inputs became jointly
    unlike any real window and the dense output of oskut-ws-augment-60p went to ~0 on them (mean 0.03, on
    real text 0.32), so those keep uniform ids.  Uniform over the nonzero rows helps rawi less, and norms
    squared overshoot (bilstm loses more at MACs x0.75).  A quantized table is measured from its zero point
    (the ``DequantizeLinear`` reading the gathered rows).
    """
    values = getattr(_table(gather.inputs[0]), "values", None)
    if values is None or np.ndim(values) < 1 or np.asarray(values).dtype.kind not in "iuf":
        return None
    table = np.moveaxis(np.asarray(values, np.float64), int(gather.attrs.get("axis", 0)), 0)
    zero = _zero_point(gather.outputs[0]) if gather.outputs else None
    if zero is not None:
        table = table - zero
    norms = np.linalg.norm(table.reshape(table.shape[0], -1), axis=1)
    total = norms.sum()
    if not np.isfinite(total) or total <= 0 or np.all(norms > UNUSED_ROW * norms.max()):
        return None
    return tuple(float(w) for w in norms / total)


def _zero_point(rows: gs.Variable, limit: int = 8) -> Optional[float]:
    """The per-tensor zero point of the ``DequantizeLinear`` reading gathered *rows*, through layout ops
    (onnxruntime's quantized embeddings are transposed for an LSTM before they are dequantized)."""
    todo, seen = [rows], 0
    while todo and seen < limit:
        current = todo.pop()
        seen += 1
        for reader in current.outputs:
            if reader.op == "DequantizeLinear":
                zero = reader.inputs[2] if len(reader.inputs) > 2 else None
                if not isinstance(zero, gs.Constant):
                    return 0.0 if zero is None else None
                values = np.asarray(zero.values, np.float64)
                return float(values.item()) if values.size == 1 else None
            if reader.op in LAYOUT_OPS:
                todo.extend(reader.outputs)
    return None


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
        bound = _index_bound(tensor)
        if bound:
            return InputFacts(IDS, *bound)
    return InputFacts(kind)


def input_facts(graph: gs.Graph) -> dict[str, InputFacts]:
    """Every graph input's facts, by name."""
    return {tensor.name: classify(tensor) for tensor in graph.inputs}
