"""Normalizations for recurrent layers."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from spa_compiler.registry import register

RECURRENT_OPS = ("LSTM", "GRU", "RNN", "DynamicQuantizeLSTM")
STATE_INPUTS = (5, 6)  # initial_h, initial_c
# Ops whose output is zero wherever their (first, or every) data input is zero.
ZERO_KEEPING = ("Slice", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Cast", "Identity", "Tile", "Expand",
                "Concat")


def is_zero(tensor: gs.Tensor, depth: int = 8) -> bool:
    """True when *tensor* is provably all zeros: a zero constant, ``ConstantOfShape`` of 0, or views of one."""
    if isinstance(tensor, gs.Constant):
        return not np.any(np.asarray(tensor.values))
    if depth == 0 or len(tensor.inputs) != 1:
        return False
    producer = tensor.inputs[0]
    if producer.op == "ConstantOfShape":
        value = producer.attrs.get("value")
        return value is None or not np.any(np.asarray(getattr(value, "values", value)))
    if producer.op == "Concat":
        return all(is_zero(t, depth - 1) for t in producer.inputs)
    return producer.op in ZERO_KEEPING and is_zero(producer.inputs[0], depth - 1)


@register("normalize", "drop_zero_states")
def drop_zero_states(graph: gs.Graph, notes: list[str]) -> None:
    """Omit recurrent initial states that are all zeros (what an omitted state means).

    PyTorch exports ``nn.LSTM`` with ``initial_h``/``initial_c`` built at run
    time from one ``ConstantOfShape`` sliced per layer: a shared tensor that
    would tie the hidden units of every layer together (and to an op with no
    rule).  Omitting them computes the same thing and leaves each layer's
    hidden units their own group.
    """
    count = 0
    for node in graph.nodes:
        if node.op not in RECURRENT_OPS:
            continue
        for index in STATE_INPUTS:
            if index < len(node.inputs) and node.inputs[index].name and is_zero(node.inputs[index]):
                node.inputs[index] = gs.Variable.empty()
                count += 1
    if count:
        graph.cleanup()
        notes.append(f"drop_zero_states: {count} all-zero initial states of recurrent layers omitted")
