"""Shape inference, a core service (the normalizations and the rewrite call it): ONNX's on the declared
(symbolic) inputs, completed at the input spec's concrete dims.

Why not onnxruntime's symbolic inference first: on a detector with dynamic
height and width it spends minutes in sympy ``simplify`` for every Resize.
Instead, where ONNX leaves a dim unknown, ONNX inference runs twice more on
a weightless copy with concrete inputs: at the input spec (:mod:`inputspec`)
and with every symbolic input dim changed.  A dim equal in both runs is
static; one that differs is dynamic, and gets a name that is the same for
every dim with the same pair of values (``seq`` when it is the input's
``seq``), so analysis rules that match dims by equality still match.
onnxruntime's symbolic inference runs only for dims still unknown after that
(ops ONNX cannot infer), and only for :data:`SYMBOLIC_SECONDS`.

The concrete shapes at the spec are also what the cost model counts MACs at
(:func:`concrete_shapes`).
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator, Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import inputspec
from .ir import ModelMeta, all_nodes, all_tensors, graph_protos, graphs_of

Shapes = dict[str, tuple[list, int]]  # tensor name -> (dims, ONNX element type)

LIGHT_CONSTANT_LIMIT = 4096
SYMBOLIC_SECONDS = 20.0
# Ops whose output has their first input's shape, but for which ONNX defines no shape inference.
SHAPE_PRESERVING = ("GroupNormalization", "QLinearSigmoid", "QLinearLeakyRelu")


def reinfer_shapes(graph: gs.Graph, meta: ModelMeta) -> gs.Graph:
    """Forget intermediate shapes and infer them again (after a rewrite changed channel counts)."""
    graphs = graphs_of(graph)
    # a body's declared inputs and outputs are its owner rule's to rewrite; a body also lists the outer
    # tensors it reads (the main graph's inputs among them), which keep their shapes too
    declared = {id(t) for g in graphs for t in [*g.inputs, *g.outputs]}
    for g in graphs:
        for tensor in g.tensors().values():
            if isinstance(tensor, gs.Variable) and id(tensor) not in declared:
                tensor.shape = None
    with inputspec.active(meta.input_spec):
        infer_graph_shapes(graph, [], symbolic=True)
    return graph


def infer_graph_shapes(graph: gs.Graph, notes: list[str], symbolic: bool) -> None:
    """Infer every intermediate shape of *graph* in place (*symbolic*: complete unknown dims, see module doc).

    Without *symbolic* only the shapes ONNX proves from the declared inputs are
    used: constant folding trusts them, and a concrete dim there would fold a
    dynamic batch into a constant.
    """
    model = light_model(graph)
    try:
        inferred = onnx_infer(model)
    except Exception as exc:  # noqa: BLE001
        notes.append(f"infer_shapes: failed ({str(exc).splitlines()[0][:160]}); exporter shapes kept")
        return
    shapes = carry_loop_shapes(graph, value_shapes(inferred))
    declared = {d for t in graph.inputs for d in (t.shape or []) if isinstance(d, str)}  # symbols, not unknowns

    def incomplete() -> bool:  # unknown dims, or tensors ONNX has no shape for (contrib ops it does not know)
        return any(has_unknown(dims, declared) for dims, _ in shapes.values()) or any(
            isinstance(t, gs.Variable) and t.name and t.name not in shapes and t not in graph.inputs
            for t in graph.tensors().values())

    if symbolic and incomplete():
        outputs = {t.name for t in graph.outputs}
        shapes = carry_loop_shapes(graph, complete(graph, shapes, outputs))
        if incomplete():  # only what is still unknown
            found = symbolic_shapes(inferred, notes)
            shapes.update({k: v for k, v in found.items()
                           if k not in shapes or (has_unknown(shapes[k][0]) and not has_unknown(v[0]))})
    for name, tensor in all_tensors(graph).items():
        if isinstance(tensor, gs.Variable) and name in shapes and tensor not in graph.inputs:
            dims, elem = shapes[name]
            tensor.shape = dims
            if tensor.dtype is None and elem:
                tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)


def carry_loop_shapes(graph: gs.Graph, shapes: Shapes) -> Shapes:
    """*shapes* with the final values of Loop-carried tensors given their initial shape, where the body
    returns that same shape (ONNX infers none: a carried value may change shape from one iteration to the next)."""
    def dims_of(tensor: gs.Tensor):
        if tensor.name in shapes:
            return shapes[tensor.name]
        if tensor.shape is not None:
            return list(tensor.shape), 0
        return None

    for node in all_nodes(graph):
        body = node.attrs.get("body")
        if node.op != "Loop" or not isinstance(body, gs.Graph):
            continue
        for j, out in enumerate(node.outputs[:max(0, len(node.inputs) - 2)]):
            initial = dims_of(node.inputs[2 + j])
            returned = dims_of(body.outputs[1 + j]) if 1 + j < len(body.outputs) else None
            if out.name in shapes and not has_unknown(shapes[out.name][0]):
                continue
            if initial and returned and not has_unknown(initial[0]) and list(initial[0]) == list(returned[0]):
                shapes[out.name] = (list(initial[0]), initial[1] or returned[1])
    return shapes


def spec_of(graph: gs.Graph) -> inputspec.InputSpecs:
    """The active input spec, or one chosen for *graph*'s inputs (direct callers of the passes)."""
    spec = inputspec.current()
    names = {t.name for t in graph.inputs}
    if spec is not None and {s.name for s in spec} >= names:
        return spec
    inputs = [(t.name, tuple(_dim(d) for d in (t.shape or [])), np.dtype(t.dtype or np.float32)) for t in graph.inputs]
    given = {s.name: s.dims for s in spec if s.name in names} if spec is not None else {}
    return inputspec.choose(inputs, given)


def _dim(d):
    return int(d) if isinstance(d, (int, np.integer)) else (str(d) if d is not None else None)


def concrete_shapes(graph: gs.Graph, spec: Optional[inputspec.InputSpecs] = None) -> dict[str, list[int]]:
    """Every tensor's shape at the input spec's concrete dims (what the cost model counts MACs at)."""
    spec = spec or spec_of(graph)
    try:
        shapes = _at(graph, spec)
    except Exception:  # noqa: BLE001 - no concrete shapes: the cost model falls back to the declared ones
        return {}
    shapes.update({name: (list(dims), 0) for name, dims in spec.shapes().items()})
    return {name: dims for name, (dims, _) in shapes.items() if all(isinstance(d, int) for d in dims)}


def complete(graph: gs.Graph, shapes: Shapes, keep_named: set[str]) -> Shapes:
    """*shapes* with unknown dims (None, ``unk__N``) resolved by two concrete inference runs.

    Tensors in *keep_named* (graph outputs) keep the names they declare and only have None dims filled.
    """
    spec = spec_of(graph)
    other = spec.varied()
    try:
        at_a, at_b = _at(graph, spec), _at(graph, other)
    except Exception:  # noqa: BLE001 - keep what the symbolic run gave
        return shapes
    symbols = spec.symbols()
    names: dict[tuple[int, int], str] = {}
    out = dict(shapes)
    for name, (dims_a, elem) in at_a.items():
        dims_b = at_b.get(name, ([], 0))[0]
        current, cur_elem = shapes.get(name, ([None] * len(dims_a), elem))
        if len(dims_b) != len(dims_a) or len(current) != len(dims_a) or not has_unknown(current):
            continue
        merged = []
        for d, va, vb in zip(current, dims_a, dims_b):
            if not _unknown(d) or not isinstance(va, int) or not isinstance(vb, int):
                merged.append(d)
            elif name in keep_named and d is not None:
                merged.append(d)
            elif va == vb:
                merged.append(va)
            else:
                merged.append(names.setdefault((va, vb), _product_name(va, vb, symbols)))
        out[name] = (merged, cur_elem or elem)
    return out


def _product_name(va: int, vb: int, symbols: dict[str, tuple[int, int]]) -> str:
    """A dynamic dim as ``coef*sym*sym`` when its two values say so, else an opaque name for the pair.

    Each input symbol was multiplied by its own prime between the runs, so
    ``vb / va`` factors uniquely into the symbols the dim is a product of
    (``batch*seq`` after a flatten); a quotient (``H/32``) gets the opaque name.
    """
    opaque = f"spac_dyn_{va}_{vb}"
    if va <= 0 or vb % va:
        return opaque
    ratio, coef, parts = vb // va, va, []
    for name, (value, prime) in sorted(symbols.items()):
        while ratio % prime == 0:
            ratio //= prime
            if coef % value:
                return opaque
            coef //= value
            parts.append(name)
    if ratio != 1 or not parts:
        return opaque
    return "*".join(([str(coef)] if coef != 1 else []) + parts)


def _at(graph: gs.Graph, spec: inputspec.InputSpecs) -> Shapes:
    """Every shape at the spec's concrete dims: ONNX inference, then onnxruntime's where ONNX stops.

    With no symbol left, onnxruntime's symbolic inference is plain arithmetic
    (fast): it knows ops and data flows ONNX's data propagation does not
    (a Slice of a Shape with computed bounds, as BERT's position ids).
    """
    inferred = onnx_infer(light_model(graph, spec.shapes()))
    shapes = value_shapes(inferred)
    # ONNX leaves out what follows an op it does not know (a DynamicQuantizeLSTM's outputs and every layer
    # after it: the second LSTM of an int8 tagger counted one time step instead of sixteen)
    produced = {name for node in inferred.graph.node for name in node.output if name}
    if any(has_unknown(dims) for dims, _ in shapes.values()) or not produced <= shapes.keys():
        shapes.update({k: v for k, v in symbolic_shapes(inferred).items() if not has_unknown(v[0])})
    return shapes


def _unknown(d) -> bool:
    return d is None or (isinstance(d, str) and d.startswith("unk__"))


def has_unknown(dims: list, declared: frozenset = frozenset()) -> bool:
    """Whether a dim is unknown: None, or an ``unk__N`` ONNX made up (not one an input declares)."""
    return any(_unknown(d) and d not in declared for d in dims)


def onnx_infer(model: onnx.ModelProto) -> onnx.ModelProto:
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


def value_shapes(model: onnx.ModelProto) -> Shapes:
    shapes = {}
    subgraphs = graph_protos(model.graph)[1:]  # bodies: their values and declared outputs
    for vi in list(model.graph.value_info) + list(model.graph.output) + [
            v for g in subgraphs for v in list(g.value_info) + list(g.output)]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in vi.type.tensor_type.shape.dim]
            shapes[vi.name] = (dims, vi.type.tensor_type.elem_type)
    return shapes


def symbolic_shapes(model: onnx.ModelProto, notes: Optional[list[str]] = None,
                    seconds: float = SYMBOLIC_SECONDS) -> Shapes:
    """onnxruntime's symbolic shape inference (sympy; plus the contrib ops of :mod:`contrib_shapes`),
    stopped after *seconds* (main thread only).

    When it cannot infer every shape (ops it does not know, such as the
    ``ai.onnx.ml`` ops of skl2onnx), onnxruntime dumps the model to
    ``sym_shape_infer_temp.onnx`` in the working directory before raising: it
    runs in a scratch directory so no file lands next to the user's.
    """
    import tempfile

    try:
        from .contrib_shapes import ContribShapeInference

        with tempfile.TemporaryDirectory(prefix="spac-shapes-") as scratch, _working_directory(scratch), \
                _time_limit(seconds):
            return value_shapes(ContribShapeInference.infer_shapes(model, auto_merge=True))
    except _TimeUp:
        if notes is not None:
            notes.append(f"infer_shapes: symbolic shape inference stopped after {seconds:g} CPU-seconds; "
                         "dims it did not reach stay unknown")
        return {}
    except Exception:  # noqa: BLE001 - unsupported ops or no sympy: keep what ONNX inferred
        return {}


class _TimeUp(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`_TimeUp` in the block after *seconds* of this process's CPU time (a no-op outside the
    main thread).  CPU time, not wall time: on a loaded machine a wall-clock limit would stop inference
    in one run and not the next, and the same command would give a different model."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(_signum, _frame):
        raise _TimeUp

    previous = signal.signal(signal.SIGPROF, expire)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


@contextlib.contextmanager
def _working_directory(path: str):
    """``contextlib.chdir`` for Python 3.10."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def light_model(graph: gs.Graph, input_dims: Optional[dict[str, tuple[int, ...]]] = None) -> onnx.ModelProto:
    """The graph as a ModelProto whose large constants are typed inputs instead of data.

    Built node by node with gs's exporter (no graph copy, no weight
    serialization): what shape inference needs, at a fraction of the cost.
    *input_dims* replaces the declared dims of the named graph inputs.
    """
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter, dtype_to_onnx

    nodes = [OnnxExporter.export_node(node) for node in graph.nodes]
    inputs = [OnnxExporter.export_value_info_proto(t, False) for t in graph.inputs]
    for vi in inputs:
        if input_dims and vi.name in input_dims:
            del vi.type.tensor_type.shape.dim[:]
            for d in input_dims[vi.name]:
                vi.type.tensor_type.shape.dim.add().dim_value = int(d)
    outputs = [OnnxExporter.export_value_info_proto(t, False) for t in graph.outputs]
    if input_dims:  # declared output dims would contradict the concrete ones
        for vi in outputs:
            if vi.type.HasField("tensor_type"):
                vi.type.tensor_type.ClearField("shape")
    initializers = []
    for tensor in graph.tensors().values():
        if not isinstance(tensor, gs.Constant):
            continue
        if int(np.prod(tensor.shape)) > LIGHT_CONSTANT_LIMIT:
            inputs.append(onnx.helper.make_tensor_value_info(tensor.name, dtype_to_onnx(tensor.dtype),
                                                             list(tensor.shape)))
        else:
            initializers.append(_small_constant(tensor))
    model = onnx.helper.make_model(onnx.helper.make_graph(nodes, graph.name or "graph", inputs, outputs,
                                                          initializers),
                                   opset_imports=graph_opsets(graph))
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    return model


def _small_constant(tensor: gs.Constant) -> onnx.TensorProto:
    """A small constant with its values inside the proto: an external-data reference hides them from inference."""
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    proto = OnnxExporter.export_tensor_proto(tensor)
    if proto.data_location == onnx.TensorProto.EXTERNAL:
        proto = onnx.numpy_helper.from_array(np.asarray(tensor.values), tensor.name)
    return proto


def graph_opsets(graph: gs.Graph) -> list[onnx.OperatorSetIdProto]:
    """The opset imports of a gs graph as protos (gs keeps them in ``graph.import_domains``)."""
    if graph.import_domains:
        return list(graph.import_domains)
    return [onnx.helper.make_opsetid("", graph.opset)]
