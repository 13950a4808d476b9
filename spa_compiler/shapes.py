"""Shape inference, a core service: the normalizations call it, and so does the rewrite.

ONNX inference runs on a weightless copy of the graph (:func:`light_model`), is
carried through ops ONNX cannot infer (:data:`SHAPE_PRESERVING`), and, for the
analysis only, completed by onnxruntime's symbolic inference where dynamic dims
leave ONNX without an answer.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .errors import first_line
from .ir import ModelMeta


def reinfer_shapes(graph: gs.Graph, meta: ModelMeta) -> gs.Graph:
    """Forget intermediate shapes and infer them again (after a rewrite changed channel counts)."""
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor not in graph.outputs and tensor not in graph.inputs:
            tensor.shape = None
    infer_graph_shapes(graph, [], symbolic=True)
    return graph


def infer_graph_shapes(graph: gs.Graph, notes: list[str], symbolic: bool) -> None:
    """Write inferred shapes onto *graph*'s variables (ONNX inference; *symbolic*: onnxruntime's where ONNX stops)."""
    model = light_model(graph)
    try:
        inferred = _onnx_infer(model)
    except Exception as exc:  # noqa: BLE001
        notes.append(f"infer_shapes: failed ({first_line(exc, 160)}); exporter shapes kept")
        return
    shapes = _value_shapes(inferred)
    missing = any(isinstance(t, gs.Variable) and t.name and t.name not in shapes and t not in graph.inputs
                  for t in graph.tensors().values())  # ONNX stops at ops it does not know (contrib ops)
    if symbolic and (missing or any(_has_unknown(dims) for dims, _ in shapes.values())):
        symbolic = _symbolic_shapes(inferred)
        shapes.update({k: v for k, v in symbolic.items() if not _has_unknown(v[0]) or k not in shapes})
    for name, tensor in graph.tensors().items():
        if isinstance(tensor, gs.Variable) and name in shapes and tensor not in graph.inputs:
            dims, elem = shapes[name]
            tensor.shape = dims
            if tensor.dtype is None and elem:
                tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)


# Ops whose output has their first input's shape, but for which ONNX defines no shape inference.
SHAPE_PRESERVING = ("GroupNormalization",)


def _onnx_infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference, carried through :data:`SHAPE_PRESERVING` ops it stops at.

    Each round declares the output type of such an op whose input is now
    known, then infers again, so the layers after it get shapes too.
    """
    for _ in range(1 + sum(n.op_type in SHAPE_PRESERVING for n in model.graph.node)):
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        known = {vi.name: vi for vi in list(inferred.graph.input) + list(inferred.graph.value_info)
                 + list(inferred.graph.output) if vi.type.HasField("tensor_type")}
        missing = [n for n in inferred.graph.node if n.op_type in SHAPE_PRESERVING and n.input
                   and n.input[0] in known and n.output[0] not in known]
        if not missing:
            return inferred
        for node in missing:
            declared = model.graph.value_info.add()
            declared.CopyFrom(known[node.input[0]])
            declared.name = node.output[0]
    return inferred


def _value_shapes(model: onnx.ModelProto) -> dict[str, tuple[list, int]]:
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in vi.type.tensor_type.shape.dim]
            shapes[vi.name] = (dims, vi.type.tensor_type.elem_type)
    return shapes


def _has_unknown(dims: list) -> bool:
    return any(d is None or (isinstance(d, str) and d.startswith("unk__")) for d in dims)


def _symbolic_shapes(model: onnx.ModelProto) -> dict[str, tuple[list, int]]:
    """onnxruntime's symbolic shape inference (sympy): resolves Reshape's -1 over dynamic dims.

    Transformer exports reshape ``[batch, seq, H*D]`` to ``[batch, seq, -1, D]``;
    plain ONNX inference cannot tell the head count there.
    When it cannot infer every shape (ops it does not know, such as the
    ``ai.onnx.ml`` ops of skl2onnx), onnxruntime dumps the model to
    ``sym_shape_infer_temp.onnx`` in the working directory before raising: it
    runs in a scratch directory so no file lands next to the user's.
    """
    import tempfile

    try:
        from .contrib_shapes import ContribShapeInference

        with tempfile.TemporaryDirectory(prefix="spac-shapes-") as scratch, _working_directory(scratch):
            return _value_shapes(ContribShapeInference.infer_shapes(model, auto_merge=True))
    except Exception:  # noqa: BLE001 - unsupported ops or no sympy: keep what ONNX inferred
        return {}


@contextlib.contextmanager
def _working_directory(path: str):
    """``contextlib.chdir`` for Python 3.10."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


LIGHT_CONSTANT_LIMIT = 4096


def light_model(graph: gs.Graph) -> onnx.ModelProto:
    """The graph as a ModelProto whose large constants are typed inputs instead of data.

    Built node by node with gs's exporter (no graph copy, no weight
    serialization): what shape inference needs, at a fraction of the cost.
    """
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter, dtype_to_onnx

    nodes = [OnnxExporter.export_node(node) for node in graph.nodes]
    inputs = [OnnxExporter.export_value_info_proto(t, False) for t in graph.inputs]
    outputs = [OnnxExporter.export_value_info_proto(t, False) for t in graph.outputs]
    initializers = []
    for tensor in graph.tensors().values():
        if not isinstance(tensor, gs.Constant):
            continue
        if int(np.prod(tensor.shape)) > LIGHT_CONSTANT_LIMIT:
            inputs.append(onnx.helper.make_tensor_value_info(tensor.name, dtype_to_onnx(tensor.dtype),
                                                             list(tensor.shape)))
        else:
            initializers.append(OnnxExporter.export_tensor_proto(tensor))
    model = onnx.helper.make_model(onnx.helper.make_graph(nodes, graph.name or "graph", inputs, outputs,
                                                          initializers),
                                   opset_imports=graph_opsets(graph))
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    return model


def graph_opsets(graph: gs.Graph) -> list[onnx.OperatorSetIdProto]:
    """The opset imports of a gs graph as protos (gs keeps them in ``graph.import_domains``)."""
    if graph.import_domains:
        return list(graph.import_domains)
    return [onnx.helper.make_opsetid("", graph.opset)]
