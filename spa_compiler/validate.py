"""What a model must satisfy before any pass runs: a sound graph and sizes that are not absurd.

Why a module of its own: a hostile or broken file must fail with one line
naming the tensor or node, *before* anything allocates or walks the graph.
A cycle, a tensor nobody produces, or an initializer whose dims disagree
with its bytes would otherwise surface deep inside a pass as a traceback;
a declared 2 TiB input or constant would surface as the OOM killer.
"""
from __future__ import annotations

from collections import deque
from typing import Iterable, Optional

import numpy as np
import onnx
import onnx.external_data_helper
import onnx.numpy_helper
from onnx.external_data_helper import uses_external_data

from .errors import ModelLoadError

# No tensor of a model this tool accepts may declare more than this (inputs, initializers,
# statically inferred intermediates): far above real models, far below what kills the machine.
ABSURD_TENSOR_BYTES = 8 * 2**30

_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")


def check_model(model: onnx.ModelProto, where: str) -> None:
    """Every check below, in the order that gives the most useful first error."""
    check_text(model, where)
    check_structure(model, where)
    check_initializers(model.graph.initializer, where)
    check_constant_nodes(model, where)
    check_shape_constants(model, where)
    check_inputs(model, where)
    check_references(model, where)
    check_acyclic(model, where)
    check_operators(model, where)
    check_functions(model, where)
    check_signatures(model, where)


def check_text(model: onnx.ModelProto, where: str) -> None:
    """Every string field (names, op types, domains, producer, doc strings, metadata) is text: protobuf hands
    invalid UTF-8 back as bytes, which every later lookup (schemas, dicts keyed by name) or the writer of
    the output model would trip over."""
    path = _non_text_field(model, "model")
    if path is not None:
        raise ModelLoadError(f"{where}: {path} is not valid UTF-8 text")


def _non_text_field(message, path: str) -> Optional[str]:
    """The path of the first string field of *message* (recursively) holding bytes, or None."""
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        if field.type == field.TYPE_STRING and any(not isinstance(v, str) for v in values):
            return f"{path}.{field.name}"
        if field.type == field.TYPE_MESSAGE:
            for index, inner in enumerate(values):
                label = getattr(inner, "name", "") if field.name in _NAMED_FIELDS else ""
                label = label if isinstance(label, str) else ""
                found = _non_text_field(inner, f"{path}.{field.name}[{label or index}]")
                if found:
                    return found
    return None


# Repeated message fields whose elements are best named by their ``name`` in an error.
_NAMED_FIELDS = ("node", "initializer", "input", "output", "value_info", "functions", "attribute")


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
        elif tensor.data_type == onnx.TensorProto.STRING and tensor.raw_data:
            raise ModelLoadError(f"{where}: initializer {tensor.name} is a STRING tensor with raw bytes "
                                 "(strings must be stored as string_data)")
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


def _all_nodes(model: onnx.ModelProto) -> Iterable[onnx.NodeProto]:
    """Nodes of the graph, of its subgraphs (If/Loop/Scan bodies) and of local functions, iteratively."""
    todo = [list(model.graph.node)] + [list(f.node) for f in model.functions]
    while todo:
        for node in todo.pop():
            yield node
            for attr in node.attribute:
                todo += [list(g.node) for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)]


def _constant_tensors(model: onnx.ModelProto) -> Iterable[tuple[onnx.NodeProto, onnx.TensorProto]]:
    for node in _all_nodes(model):
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield node, attr.t


def check_constant_nodes(model: onnx.ModelProto, where: str) -> None:
    """Constant nodes' tensors pass the same checks as initializers (a ``[2**40]`` constant would be
    expanded by the first pass that reads it)."""
    for node, tensor in _constant_tensors(model):
        try:
            check_initializers([tensor], where)
        except ModelLoadError as exc:
            detail = str(exc).split(": initializer ", 1)[-1].split(" ", 1)[-1]
            raise ModelLoadError(f"{where}: Constant node {_label(node)} {detail}") from None


# Ops whose constant shape input sets their output's element count: (input index, whether 0/-1 are special).
_SHAPE_INPUTS = {"Reshape": 1, "Expand": 1, "ConstantOfShape": 0, "Tile": 1}


def check_shape_constants(model: onnx.ModelProto, where: str) -> None:
    """Refuse shape constants that describe absurd tensors, before shape inference propagates them.

    ONNX data propagation materializes what it can prove: a Reshape or Expand
    to ``[2**40]`` grows the inference to gigabytes before any size check on
    inferred shapes can run.  The product of the positive entries of a
    constant shape (or Tile's repeats) bounds the output's element count.
    """
    constants = {t.name: t for t in model.graph.initializer}
    constants.update({node.output[0]: t for node, t in _constant_tensors(model) if node.output})
    for node in _all_nodes(model):
        index = _SHAPE_INPUTS.get(node.op_type)
        if index is None or len(node.input) <= index or node.input[index] not in constants:
            continue
        tensor = constants[node.input[index]]
        if tensor.data_type != onnx.TensorProto.INT64 or onnx.external_data_helper.uses_external_data(tensor) \
                or nbytes(tensor.dims, tensor.data_type) > 2**16:
            continue
        try:
            values = onnx.numpy_helper.to_array(tensor).reshape(-1)
        except (ValueError, TypeError):
            continue  # malformed: check_initializers names it
        count = int(np.prod([int(v) for v in values if v > 0], dtype=object))
        if count > ABSURD_TENSOR_BYTES:
            raise ModelLoadError(f"{where}: node {_label(node)} asks for {count} elements (shape constant "
                                 f"{values.tolist()[:8]}); refused before allocating")


def check_functions(model: onnx.ModelProto, where: str) -> None:
    """Local functions must not call themselves (directly or through each other): inlining never ends."""
    local = {(f.domain, f.name): f for f in model.functions}
    calls = {key: {(n.domain, n.op_type) for n in f.node if (n.domain, n.op_type) in local}
             for key, f in local.items()}
    state: dict = {}
    for start in calls:
        stack = [(start, iter(calls[start]))]
        state[start] = 1
        while stack:
            key, pending = stack[-1]
            callee = next(pending, None)
            if callee is None:
                state[key] = 2
                stack.pop()
            elif state.get(callee) == 1:
                raise ModelLoadError(f"{where}: local function {callee[1]} calls itself (recursion); refused")
            elif callee not in state:
                state[callee] = 1
                stack.append((callee, iter(calls[callee])))


# Window attributes that have no meaning empty (``value_ints=[]`` of a Constant, say, is a real empty shape).
_NON_EMPTY = ("strides", "pads", "dilations", "kernel_shape")


def check_signatures(model: onnx.ModelProto, where: str) -> None:
    """Attributes and constant inputs of default-domain nodes have the types the operator's schema allows.

    ``group=['a']`` or a STRING weight would otherwise fail deep inside a pass
    (or in onnxruntime) as an internal error.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    typed = {t.name: t.data_type for t in model.graph.initializer}
    typed.update({node.output[0]: t.data_type for node, t in _constant_tensors(model) if node.output})
    for node in model.graph.node:
        if (node.domain or "") not in ("", "ai.onnx"):
            continue
        try:
            schema = onnx.defs.get_schema(node.op_type, opset, "")
        except Exception:  # noqa: BLE001 - unknown here: check_operators decides
            continue
        inputs = len(node.input) - next((i for i, n in enumerate(reversed(node.input)) if n), len(node.input))
        if not schema.min_input <= inputs <= schema.max_input or not 1 <= len(node.output) <= schema.max_output:
            raise ModelLoadError(f"{where}: node {_label(node)} has {inputs} inputs and {len(node.output)} outputs; "
                                 f"{node.op_type} takes {schema.min_input}-{schema.max_input} inputs and "
                                 f"{schema.min_output}-{schema.max_output} outputs")
        for attr in node.attribute:
            want = schema.attributes.get(attr.name)
            if attr.name in _NON_EMPTY and attr.type == onnx.AttributeProto.INTS and not attr.ints:
                raise ModelLoadError(f"{where}: node {_label(node)}: attribute {attr.name} is an empty list")
            if want is not None and attr.type != want.type:
                raise ModelLoadError(f"{where}: node {_label(node)}: attribute {attr.name} is "
                                     f"{onnx.AttributeProto.AttributeType.Name(attr.type)}, the operator needs "
                                     f"{onnx.AttributeProto.AttributeType.Name(want.type)}")
        allowed_by = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
        for i, name in enumerate(node.input):
            if name not in typed or not schema.inputs:
                continue
            formal = schema.inputs[min(i, len(schema.inputs) - 1)]
            allowed = allowed_by.get(formal.type_str, {formal.type_str})
            actual = f"tensor({_type_name(typed[name])})"
            if allowed and actual not in allowed:
                raise ModelLoadError(f"{where}: node {_label(node)} reads {name} of type {actual}, which "
                                     f"{node.op_type} does not accept")


def _type_name(elem_type: int) -> str:
    names = {onnx.TensorProto.FLOAT: "float", onnx.TensorProto.DOUBLE: "double", onnx.TensorProto.BOOL: "bool",
             onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16"}
    name = onnx.TensorProto.DataType.Name(elem_type) if elem_type in onnx.TensorProto.DataType.values() else "?"
    return names.get(elem_type, name.lower())


def topological_order(model: onnx.ModelProto) -> None:
    """Put the graph's nodes in topological order (exporters need not; deep recursions in later passes
    would otherwise walk a 2,000-node chain listed backwards).  Assumes :func:`check_acyclic` passed."""
    nodes = list(model.graph.node)
    order, _ = _kahn(nodes)
    if order != list(range(len(nodes))) and len(order) == len(nodes):
        del model.graph.node[:]
        model.graph.node.extend(nodes[i] for i in order)


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
    order, waiting = _kahn(model.graph.node)
    if len(order) < len(model.graph.node):
        stuck = next(i for i, n in enumerate(waiting) if n > 0)
        raise ModelLoadError(f"{where}: the graph has a cycle (through node {_label(model.graph.node[stuck])})")


def _reads(node: onnx.NodeProto) -> set[str]:
    """Tensors a node reads: its inputs and the outer-scope names its subgraphs (If/Loop bodies) use."""
    names = set(node.input)
    todo = [g for a in node.attribute for g in ([a.g] if a.HasField("g") else []) + list(a.graphs)]
    while todo:
        graph = todo.pop()
        for inner in graph.node:
            names.update(inner.input)
            todo += [g for a in inner.attribute for g in ([a.g] if a.HasField("g") else []) + list(a.graphs)]
    return names


def _kahn(nodes) -> tuple[list[int], list[int]]:
    """Kahn's algorithm: node indices in a topological order, and the unmet inputs left (non-zero: a cycle)."""
    producer = {name: i for i, node in enumerate(nodes) for name in node.output if name}
    readers: dict[int, list[int]] = {i: [] for i in range(len(nodes))}
    waiting = [0] * len(nodes)
    for i, node in enumerate(nodes):
        for j in {producer[name] for name in _reads(node) if name in producer}:
            readers[j].append(i)
            waiting[i] += 1
    ready = deque(i for i, n in enumerate(waiting) if n == 0)
    order = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for k in readers[i]:
            waiting[k] -= 1
            if waiting[k] == 0:
                ready.append(k)
    return order, waiting


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
