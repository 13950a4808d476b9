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

**Scale of image inputs** (``scale``): data-free images have unit variance, the convention of inputs
normalized by the package (ImageNet mean/std).  Some packages feed raw-range pixels instead (open-nsfw:
BGR minus the mean, values about +-128) and nothing in the graph normalizes them; unit noise then sits
100x below what the first layer was trained on, and its bias swamps everything after it.  The evidence is
the first convolution when a BatchNorm was folded into it: on the training inputs the folded layer's
output has per-channel std ``gamma`` and its bias is ``beta - gamma * mu / sigma``, of the same order.
So ``rms(bias) / rms(std of the layer's output on unit 1/f² noise)`` estimates the inputs' scale
(open-nsfw: 54, the std of its BGR-minus-mean pixels is about 60; the ViT trained here on normalized
digits: 0.3).  A bias-to-output ratio says no more than an order of magnitude, so the noise is scaled
only when the estimate is at least ``SCALE_EVIDENCE`` away from 1; a convolution without bias (BatchNorm
kept, whose statistics then normalize the noise anyway) leaves the scale at 1.
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
SCALE_EVIDENCE = 8.0  # an input scale is adopted only this far from unit variance (see the module docstring)
VALUE_PRESERVING = ("Transpose", "Identity")  # between an image input and its first convolution
PROBE_SIDE = 48  # side of the 1/f² probe images the first convolution is run on


@dataclass(frozen=True)
class InputFacts:
    """One graph input's kind and, for ids, the exclusive upper bound of its values."""

    kind: str
    high: Optional[int] = None
    scale: float = 1.0  # float inputs: std of the values (see the module docstring)


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
    if kind == FLOAT:
        return InputFacts(kind, scale=input_scale(tensor))
    return InputFacts(kind)


def _first_conv(tensor: gs.Variable) -> Optional[gs.Node]:
    """The 2-D convolution that alone reads *tensor*, through layout-only ops (an NHWC input's Transpose)."""
    current = tensor
    for _ in range(4):
        if len(current.outputs) != 1:
            return None
        node = current.outputs[0]
        if node.op in VALUE_PRESERVING and node.outputs:
            current = node.outputs[0]
            continue
        weight = node.inputs[1] if node.op == "Conv" and len(node.inputs) > 2 else None
        if isinstance(weight, gs.Constant) and isinstance(node.inputs[2], gs.Constant) and len(weight.shape) == 4 \
                and int(node.attrs.get("group", 1)) == 1:
            return node
        return None
    return None


def input_scale(tensor: gs.Variable) -> float:
    """The std of an image input's real values, where the first convolution's folded bias says (else 1)."""
    from .inputvalues import pink_images

    conv = _first_conv(tensor)
    if conv is None:
        return 1.0
    weight = np.asarray(conv.inputs[1].values, dtype=np.float64)
    bias = np.asarray(conv.inputs[2].values, dtype=np.float64)
    out, channels, kh, kw = weight.shape
    if not np.isfinite(bias).all() or not np.any(bias) or max(kh, kw) >= PROBE_SIDE:
        return 1.0
    probe = pink_images((2, channels, PROBE_SIDE, PROBE_SIDE), np.random.default_rng(0))
    patches = np.lib.stride_tricks.sliding_window_view(probe, (kh, kw), axis=(2, 3))
    rows = patches.transpose(0, 2, 3, 1, 4, 5).reshape(-1, channels * kh * kw)
    spread = float(np.sqrt(np.mean((rows @ weight.reshape(out, -1).T).var(axis=0))))
    if not spread > 0:
        return 1.0
    scale = float(np.sqrt(np.mean(bias ** 2))) / spread
    return scale if (scale >= SCALE_EVIDENCE or scale <= 1 / SCALE_EVIDENCE) and np.isfinite(scale) else 1.0


def input_facts(graph: gs.Graph) -> dict[str, InputFacts]:
    """Every graph input's facts, by name."""
    return {tensor.name: classify(tensor) for tensor in graph.inputs}
