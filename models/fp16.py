"""fp16 copies of float models, as onnxconverter-common's ``float16`` conversion makes them (torch-free).

Every float32 initializer and constant becomes float16, and so do the
graph's float inputs and outputs; the inputs ONNX requires in float32 stay
(Resize's roi and scales), so the copy runs in onnxruntime as the original
does.  Used by the fp16 tests (mask oracle, OBSPA, latency tables).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

KEEP_FLOAT32 = {"Resize": (1, 2)}  # op -> input positions that must stay float32


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of *model* (value_info dropped: shapes are inferred again)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    keep = {node.input[i] for node in graph.node for i in KEEP_FLOAT32.get(node.op_type, ()) if i < len(node.input)}
    for index, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT and init.name not in keep:
            half = numpy_helper.to_array(init).astype(np.float16)
            graph.initializer[index].CopyFrom(numpy_helper.from_array(half, init.name))
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT \
                    and not set(node.output) & keep:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name))
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    del graph.value_info[:]
    return out
