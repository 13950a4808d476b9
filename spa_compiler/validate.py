"""What a model must satisfy before any pass runs: a sound graph and sizes that are not absurd.

Why a module of its own: a hostile or broken file must fail with one line
naming the tensor or node, *before* anything allocates or walks the graph.
A cycle, a tensor nobody produces, or an initializer whose dims disagree
with its bytes would otherwise surface deep inside a pass as a traceback;
a declared 2 TiB input or constant would surface as the OOM killer.
"""
from __future__ import annotations

from collections import deque
from typing import Iterable

import numpy as np
import onnx
from onnx.external_data_helper import uses_external_data

from .errors import ModelLoadError

# No tensor of a model this tool accepts may declare more than this (inputs, initializers,
# statically inferred intermediates): far above real models, far below what kills the machine.
ABSURD_TENSOR_BYTES = 8 * 2**30

_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def check_model(model: onnx.ModelProto, where: str) -> None:
    """Every check below, in the order that gives the most useful first error."""
    check_structure(model, where)
    check_initializers(model.graph.initializer, where)
    check_inputs(model, where)
    check_references(model, where)
    check_acyclic(model, where)
    check_operators(model, where)


def check_structure(model: onnx.ModelProto, where: str) -> None:
    """A graph with nodes, outputs, a default-domain opset, and every tensor produced once."""
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise ModelLoadError(f"{where}: not an ONNX model (no graph or no nodes)")
    produced: dict[str, str] = {i.name: "an initializer" for i in model.graph.initializer}
    for node in model.graph.node:
        for name in node.output:
            if name and name in produced:
                raise ModelLoadError(f"{where}: tensor {name!r} is produced twice (by {produced[name]} and by node "
                                     f"{_label(node)})")
            if name:
                produced[name] = f"node {_label(node)}"
    if not model.graph.output:
        raise ModelLoadError(f"{where}: the graph has no outputs")
    if not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        raise ModelLoadError(f"{where}: no default-domain opset import")


def nbytes(dims: Iterable[int], elem_type: int) -> int:
    """Bytes a tensor of *dims* would take (strings and unknown types count one byte per element)."""
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 1
    return int(np.prod([int(d) for d in dims], dtype=object)) * itemsize


def check_initializers(initializers: Iterable[onnx.TensorProto], where: str) -> None:
    """Dims that are not negative or absurd, and stored data that holds exactly what the dims say."""
    for tensor in initializers:
        if any(d < 0 for d in tensor.dims):
            raise ModelLoadError(f"{where}: initializer {tensor.name} has negative dims {list(tensor.dims)}")
        size = nbytes(tensor.dims, tensor.data_type)
        if size > ABSURD_TENSOR_BYTES:
            raise ModelLoadError(f"{where}: initializer {tensor.name} declares {_gib(size)} (dims "
                                 f"{list(tensor.dims)}); refused")
        count = int(np.prod(tensor.dims, dtype=np.int64))
        if uses_external_data(tensor):
            length = next((e.value for e in tensor.external_data if e.key == "length"), None)
            stored, wanted = (int(length), size) if length is not None and length.isdigit() else (None, None)
        elif tensor.HasField("raw_data") or tensor.raw_data:
            stored, wanted = len(tensor.raw_data), size
        elif tensor.data_type == onnx.TensorProto.STRING:
            stored, wanted = len(tensor.string_data), count
        else:
            stored = next((len(getattr(tensor, f)) for f in _TYPED_FIELDS if len(getattr(tensor, f))), 0)
            wanted = _typed_count(tensor.data_type, count)
        if stored is not None and stored != wanted:
            raise ModelLoadError(f"{where}: initializer {tensor.name} holds {stored} "
                                 f"{'bytes' if wanted == size else 'values'} but its dims {list(tensor.dims)} "
                                 f"need {wanted}")


def _typed_count(elem_type: int, count: int) -> int:
    """Entries a typed field holds for *count* elements (complex numbers take two)."""
    return 2 * count if elem_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else count


def check_inputs(model: onnx.ModelProto, where: str) -> None:
    """Graph inputs whose static shape alone would need an absurd allocation to feed are refused."""
    for value in model.graph.input:
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
            continue
        dims = [d.dim_value for d in tensor_type.shape.dim if d.HasField("dim_value")]
        size = nbytes(dims, tensor_type.elem_type)
        if size > ABSURD_TENSOR_BYTES:
            raise ModelLoadError(f"{where}: graph input {value.name} declares {_gib(size)} (dims {dims}); refused")


def check_references(model: onnx.ModelProto, where: str) -> None:
    """Every tensor a node reads is a graph input, an initializer or some node's output."""
    known = {v.name for v in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    known |= {name for node in model.graph.node for name in node.output}
    for node in model.graph.node:
        for name in node.input:
            if name not in known:
                raise ModelLoadError(f"{where}: node {_label(node)} reads tensor {name!r}, which no node, graph "
                                     "input or initializer produces")
    for value in model.graph.output:
        if value.name not in known:
            raise ModelLoadError(f"{where}: graph output {value.name!r} is produced by nothing")


def check_acyclic(model: onnx.ModelProto, where: str) -> None:
    """The nodes form a DAG (exporters need not sort them, but a cycle can never run)."""
    producer = {name: i for i, node in enumerate(model.graph.node) for name in node.output if name}
    readers: dict[int, list[int]] = {i: [] for i in range(len(model.graph.node))}
    waiting = [0] * len(model.graph.node)
    for i, node in enumerate(model.graph.node):
        for j in {producer[name] for name in node.input if name in producer}:
            readers[j].append(i)
            waiting[i] += 1
    ready = deque(i for i, n in enumerate(waiting) if n == 0)
    done = 0
    while ready:
        i = ready.popleft()
        done += 1
        for k in readers[i]:
            waiting[k] -= 1
            if waiting[k] == 0:
                ready.append(k)
    if done < len(model.graph.node):
        stuck = next(i for i, n in enumerate(waiting) if n > 0)
        raise ModelLoadError(f"{where}: the graph has a cycle (through node {_label(model.graph.node[stuck])})")


def check_operators(model: onnx.ModelProto, where: str) -> None:
    """Refuse default-domain ops that ONNX does not define.

    Such a node is an exporter's leftover, not an operator (tf2onnx leaves
    TensorFlow's ``StatefulPartitionedCall`` in Keras ConvNeXt): no runtime
    can load the model, and its framework attributes are not even text.
    Ops of other domains are fine: they have no rule and freeze their groups.
    """
    local = {(f.domain, f.name) for f in model.functions}
    for node in model.graph.node:
        domain = node.domain or ""
        if domain in ("", "ai.onnx") and (domain, node.op_type) not in local and not onnx.defs.has(node.op_type):
            raise ModelLoadError(f"{where}: node {_label(node)} is not an ONNX operator (an exporter left a "
                                 "framework op in the graph; no runtime can load this model)")


def _label(node: onnx.NodeProto) -> str:
    return f"{node.name or '<unnamed>'} ({node.op_type})"


def _gib(size: int) -> str:
    return f"{size / 2**30:.3g} GiB"
