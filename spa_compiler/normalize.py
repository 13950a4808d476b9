"""The normalize stage: run the registered normalization passes in a fixed order.

Two levels: *model* passes take and return an ``onnx.ModelProto`` (opset
upgrade, shape inference need the proto), *graph* passes edit the gs IR in
place.  Each pass appends what it did to ``notes`` so the report can say it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx
import onnx_graphsurgeon as gs

from . import registry
from .errors import CompileError, ModelLoadError, SpacError
from .ir import ModelMeta, meta_of, to_graph, to_model

MODEL_PIPELINE_BEFORE = ("strip_initializer_inputs", "upgrade_opset")
GRAPH_PIPELINE = ("constants_to_initializers", "castlike_constants", "lower_ml_scaler", "remove_identity",
                  "infer_shapes", "refuse_absurd_shapes", "sequence_split_to_split", "einsum_to_matmul",
                  "fold_weight_layouts", "infer_shapes", "fold_constants", "drop_zero_states", "group_norm_as_split",
                  "unshare_initializers", "cleanup", "infer_shapes_symbolic", "refuse_inconsistent_weights")


@dataclass
class Normalized:
    """A normalized model: the gs graph passes edit, plus what export needs to rebuild the proto."""

    graph: gs.Graph
    meta: ModelMeta
    notes: list[str] = field(default_factory=list)

    def to_model(self) -> onnx.ModelProto:
        return to_model(self.graph, self.meta)


def _run(kind_name: str, obj, notes: list[str]):
    info = registry.get("normalize", kind_name)
    try:
        return info.factory(obj, notes)
    except SpacError:
        raise
    except UnicodeDecodeError:
        raise ModelLoadError("a name or string in the model is not valid UTF-8 text") from None
    except Exception as exc:  # noqa: BLE001 - a failing pass must name itself
        raise CompileError(f"normalize pass {kind_name} failed: {str(exc).splitlines()[0][:200]}") from exc


def normalize(model: onnx.ModelProto, copy: bool = True, spec=None) -> Normalized:
    """Run the whole normalization pipeline on *model* (on a copy unless *copy* is False).

    The compiler passes ``copy=False`` for models it loaded itself: a model
    handed in by a caller is never modified, a file's model is nobody else's.
    *spec* (:class:`inputspec.InputSpecs`, chosen for the model when None) is
    where shape inference completes dims the declared inputs leave unknown;
    a callable is asked for it just before that inference (the refusal of
    hostile shapes has run by then; its error is raised after the passes, so
    a refusal that names a node comes first).
    """
    from .inputspec import active, choose, declared_inputs

    notes: list[str] = []
    if copy:
        work = onnx.ModelProto()
        work.CopyFrom(model)
    else:
        work = model
    for name in MODEL_PIPELINE_BEFORE:
        work = _run(name, work, notes)
    meta = meta_of(work)
    chosen = choose(declared_inputs(work), None, meta.metadata)
    meta.input_spec = chosen if spec is None or callable(spec) else spec
    graph = to_graph(work)
    deferred = None
    for name in GRAPH_PIPELINE:
        if name == "infer_shapes_symbolic" and callable(spec):
            try:
                meta.input_spec = spec()
            except SpacError as exc:  # the input does not run: a refusal naming the node, below, says more
                deferred = exc
        with active(meta.input_spec):
            _run(name, graph, notes)
    if deferred is not None:
        raise deferred
    return Normalized(graph, meta, notes)


def reinfer_shapes(graph: gs.Graph, meta: ModelMeta) -> gs.Graph:
    """Forget intermediate shapes and infer them again (after a rewrite changed channel counts)."""
    from .inputspec import active

    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor not in graph.outputs and tensor not in graph.inputs:
            tensor.shape = None
    with active(meta.input_spec):
        _run("infer_shapes_symbolic", graph, [])
    return graph
