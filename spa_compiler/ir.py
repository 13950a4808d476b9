"""Thin helpers over onnx-graphsurgeon's IR, the in-memory form every pass works on.

Why gs: its Graph/Node/Tensor objects know producers and consumers, so passes
walk the graph without rebuilding name maps, and Constant tensors load their
values lazily.  Conversions to and from ``onnx.ModelProto`` live here and only
here, so the rest of the compiler never sees protobufs.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

# onnx-graphsurgeon logs warnings for things the compiler handles itself.
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR
logging.getLogger("onnx_graphsurgeon").setLevel(logging.ERROR)


@dataclass
class ModelMeta:
    """What ``gs.export_onnx`` would forget: the model-level fields of the input."""

    ir_version: int
    opset_imports: list[onnx.OperatorSetIdProto]
    producer_name: str = ""
    producer_version: str = ""
    doc_string: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    functions: list[onnx.FunctionProto] = field(default_factory=list)
    # Graph outputs that are not tensors (skl2onnx's ZipMap: a sequence of maps); gs only knows tensors.
    output_types: dict[str, onnx.TypeProto] = field(default_factory=dict)
    # The input dims shape inference completes unknown dims at (spa_compiler.inputspec.InputSpecs).
    input_spec: Optional[object] = None

    @property
    def opset(self) -> int:
        """The default-domain opset version."""
        for op in self.opset_imports:
            if op.domain in ("", "ai.onnx"):
                return op.version
        return 1


def meta_of(model: onnx.ModelProto) -> ModelMeta:
    """Capture a model's top-level fields so a rewritten graph can be re-wrapped faithfully."""
    return ModelMeta(
        ir_version=model.ir_version,
        opset_imports=[onnx.OperatorSetIdProto(domain=o.domain, version=o.version)
                       for o in model.opset_import],
        producer_name=model.producer_name,
        producer_version=model.producer_version,
        doc_string=model.doc_string,
        metadata={p.key: p.value for p in model.metadata_props},
        functions=list(model.functions),
        output_types={o.name: o.type for o in model.graph.output if not o.type.HasField("tensor_type")},
    )


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """Import a model into the gs IR; external weights become lazily mapped views (see weights.py)."""
    from .weights import map_external

    graph = gs.import_onnx(model)
    for node, proto in _paired_nodes(graph, model.graph):
        for attr in proto.attribute:
            if attr.type in _LIST_TYPES and not attr.ref_attr_name and not getattr(attr, _LIST_TYPES[attr.type]):
                node.attrs[attr.name] = EmptyListAttribute(attr.type)
    map_external(graph)
    return graph


# Repeated attribute types and the AttributeProto field holding their values.
_LIST_TYPES = {onnx.AttributeProto.INTS: "ints", onnx.AttributeProto.FLOATS: "floats",
               onnx.AttributeProto.STRINGS: "strings", onnx.AttributeProto.TENSORS: "tensors",
               onnx.AttributeProto.GRAPHS: "graphs"}


class EmptyListAttribute(list):
    """An empty list attribute (``axes=[]``) that remembers its ONNX type.

    Why: gs exports attributes through ``onnx.helper.make_attribute``, which cannot
    type an empty list and raises; an empty list is valid ONNX (a Constant's
    ``value_ints=[]`` is an empty shape), so it must survive the round trip.
    Passes read it as the plain empty list it is.
    """

    def __init__(self, attr_type: int = onnx.AttributeProto.INTS):
        super().__init__()
        self.attr_type = attr_type


def _paired_nodes(graph: gs.Graph, proto: onnx.GraphProto):
    """(gs node, NodeProto) pairs of a graph and its subgraphs: gs keeps node order both ways."""
    for node, node_proto in zip(graph.nodes, proto.node):
        yield node, node_proto
        for attr in node_proto.attribute:  # subgraph bodies, which gs imports in order too
            value = node.attrs.get(attr.name)
            if attr.type == onnx.AttributeProto.GRAPH and isinstance(value, gs.Graph):
                yield from _paired_nodes(value, attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS and isinstance(value, list):
                for sub, sub_proto in zip(value, attr.graphs):
                    yield from _paired_nodes(sub, sub_proto)


def _export_attributes(attrs: dict) -> list[onnx.AttributeProto]:
    """gs's attribute exporter, with empty lists written with their type (see :class:`EmptyListAttribute`).

    Installed in place of ``OnnxExporter.export_attributes`` because every gs export
    path (whole graphs, single nodes for shape inference, subgraph bodies) goes
    through it; an empty list a pass made itself is written as INTS.
    """
    exported = []
    for name, value in attrs.items():
        if isinstance(value, list) and not value:
            exported.append(onnx.AttributeProto(name=name, type=getattr(value, "attr_type", onnx.AttributeProto.INTS)))
        else:
            exported.extend(_gs_export_attributes({name: value}))
    return exported


_gs_export_attributes = OnnxExporter.export_attributes
OnnxExporter.export_attributes = staticmethod(_export_attributes)


@lru_cache(maxsize=1)
def max_runtime_ir_version() -> int:
    """The newest IR version the installed onnxruntime loads (probed once).

    onnx may write a newer IR than onnxruntime reads (onnx 1.23 writes 14 while
    onnxruntime 1.31 stops at 13), and a compiler must never emit a file its own
    verifier cannot open.
    """
    import onnxruntime as ort

    for ir in range(onnx.IR_VERSION, 3, -1):
        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                                  [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                  [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        probe.ir_version = ir
        try:
            ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
            return ir
        except Exception:  # noqa: BLE001 - any refusal means "too new"
            continue
    return 7


def choose_ir_version(meta: ModelMeta) -> int:
    """Keep the input's IR version when the runtime reads it, never below what the opsets need."""
    needed = helper.find_min_ir_version_for(meta.opset_imports, ignore_unknown=True)
    return max(needed, min(meta.ir_version or onnx.IR_VERSION, max_runtime_ir_version()))


def to_model(graph: gs.Graph, meta: ModelMeta, embed: bool = True) -> onnx.ModelProto:
    """Export the gs IR back to a ModelProto with the input's opsets, IR version and metadata.

    *embed*: weights still mapped from files are read into the proto (what an
    in-memory onnxruntime session needs); without it they stay references,
    for a model whose data file was just written (``weights.stream_weights``).
    """
    model = gs.export_onnx(graph, do_type_check=False)
    if embed:
        from .weights import embed_external

        embed_external(model)
    # Intermediate shapes are the compiler's own inference (symbolic dims merged for analysis):
    # runtimes infer their own, and a merged dim written here could contradict them.
    strip_value_info(model.graph)
    del model.opset_import[:]
    model.opset_import.extend(meta.opset_imports)
    model.ir_version = choose_ir_version(meta)
    model.producer_name = meta.producer_name or "spa-compiler"
    model.producer_version = meta.producer_version
    model.doc_string = meta.doc_string
    del model.metadata_props[:]
    for key, value in meta.metadata.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    if meta.functions and not model.functions:
        model.functions.extend(meta.functions)
    for output in model.graph.output:
        if output.name in meta.output_types:
            output.type.CopyFrom(meta.output_types[output.name])
    return model


COPY_MARK = "__use"  # unshare_initializers names the k-th extra use of a shared weight NAME__usek
_COPY = re.compile(rf"^(.+){COPY_MARK}\d+_*$")


def copy_base(name: str) -> Optional[str]:
    """The shared weight a per-use copy was made from (None for other names)."""
    match = _COPY.match(name)
    return match.group(1) if match else None


def graphs_of(graph: gs.Graph) -> list[gs.Graph]:
    """*graph* and every subgraph (If branches, Loop and Scan bodies) nested in it."""
    return [graph, *graph.subgraphs(recursive=True)]


def all_nodes(graph: gs.Graph) -> list[gs.Node]:
    """Nodes of *graph* and of its subgraphs: a body's layers are analysed and rewritten like the graph's."""
    return [node for g in graphs_of(graph) for node in g.nodes]


def all_tensors(graph: gs.Graph) -> dict[str, gs.Tensor]:
    """Tensors of *graph* and of its subgraphs by name (ONNX names are unique across scopes)."""
    tensors: dict[str, gs.Tensor] = {}
    for g in graphs_of(graph):
        for name, tensor in g.tensors().items():
            tensors.setdefault(name, tensor)
    return tensors


def constants_of(graph: gs.Graph) -> dict[str, gs.Constant]:
    """Every constant of *graph* and its subgraphs by name (a branch's own weights are parameters too)."""
    return {name: t for name, t in all_tensors(graph).items() if isinstance(t, gs.Constant)}


def graph_protos(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """*graph* and every subgraph proto nested in it."""
    found, todo = [], [graph]
    while todo:
        g = todo.pop()
        found.append(g)
        for node in g.node:
            for attribute in node.attribute:
                todo += ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
    return found


def strip_value_info(graph: onnx.GraphProto) -> None:
    """Drop the intermediate shapes of *graph* and its subgraphs (runtimes infer their own)."""
    for g in graph_protos(graph):
        del g.value_info[:]


def is_const(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Constant)


def const_values(tensor: gs.Tensor) -> Optional[np.ndarray]:
    """The values of a constant tensor, or None for a variable (or an empty optional input)."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    return None


def const_shape(tensor: Optional[gs.Tensor]) -> Optional[tuple[int, ...]]:
    """Shape of a constant without loading its values (large weights stay lazy); None for variables.

    A dequantized constant (QDQ weights: ``DequantizeLinear`` of an initializer) counts as a constant:
    rules see the weight, and its slices land on the quantized initializer (``rules/quantized.py``).
    """
    if isinstance(tensor, gs.Constant):
        return tuple(int(d) for d in tensor.shape)
    source = dequantized_constant(tensor)
    return None if source is None else tuple(int(d) for d in source.shape)


def dequantized_constant(tensor: Optional[gs.Tensor]) -> Optional[gs.Constant]:
    """The quantized initializer behind ``DequantizeLinear(initializer, scale, zero_point)``, else None.

    Blocked quantization (``block_size``) is left alone: its scales do not slice with the weight's axes.
    """
    if tensor is None or isinstance(tensor, gs.Constant) or len(tensor.inputs) != 1:
        return None
    producer = tensor.inputs[0]
    if producer.op != "DequantizeLinear" or producer.attrs.get("block_size", 0):
        return None
    if not all(isinstance(t, gs.Constant) for t in producer.inputs if t is not None and t.name):
        return None
    return producer.inputs[0]


def static_shape(tensor: gs.Tensor) -> Optional[list[Optional[int]]]:
    """The tensor's shape with symbolic or unknown dims as None; None when the rank is unknown."""
    shape = tensor.shape
    if shape is None:
        return None
    return static_dims(shape)


def dims_product(dims) -> int:
    """Product of *dims*, unknown (None) dims counted as 1."""
    return int(np.prod([d if d is not None else 1 for d in dims], dtype=np.int64))


def static_dims(shape) -> list[Optional[int]]:
    """A shape (list of dims) with symbolic or unknown dims as None; an unknown shape gives []."""
    return [d if isinstance(d, (int, np.integer)) and d >= 0 else None for d in (shape or [])]


def node_label(node: gs.Node) -> str:
    """How errors and reports name a node: its name and op type."""
    return f"{node.name or '<unnamed>'} ({node.op})"


def attr(node: gs.Node, name: str, default=None):
    return node.attrs.get(name, default)


def input_at(node: gs.Node, index: int) -> Optional[gs.Tensor]:
    """Input *index*, or None when absent or an empty optional input."""
    if index >= len(node.inputs):
        return None
    tensor = node.inputs[index]
    if tensor is None or (not is_const(tensor) and tensor.name == ""):
        return None
    return tensor


def int_list(node: gs.Node, attr_name: str, input_index: int) -> Optional[list[int]]:
    """Read a list-valued operand that moved from an attribute to an input across opsets.

    (Split sizes, Slice starts, Reduce axes, Squeeze axes, Pad pads...)  Returns
    None when it is neither present as a constant input nor as an attribute.
    """
    tensor = input_at(node, input_index)
    if tensor is not None:
        values = const_values(tensor)
        return None if values is None else [int(v) for v in np.atleast_1d(values)]
    value = node.attrs.get(attr_name)
    return None if value is None else [int(v) for v in np.atleast_1d(value)]


def normalize_axes(axes: Sequence[int], rank: int) -> list[int]:
    return [a + rank if a < 0 else a for a in axes]
