"""The normalize stage: run the registered normalization passes in the order ``passes/pipeline.py`` gives.

Two levels, declared by each pass when it registers: *model* passes take and
return an ``onnx.ModelProto``, *graph* passes edit the gs IR in place.  Plugin
normalizations run in the pipeline's plugin slot of their level.  Each pass
appends what it did to ``notes`` so the report can say it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx
import onnx_graphsurgeon as gs

from . import registry
from .errors import CompileError, ModelLoadError, SpacError, first_line
from .ir import ModelMeta, meta_of, to_graph, to_model


def pipeline(level: str) -> list[str]:
    """The normalization pass names of *level* in running order, plugins expanded into their slot."""
    from .passes.pipeline import GRAPH_PIPELINE, MODEL_PIPELINE, PLUGINS

    order = {"model": MODEL_PIPELINE, "graph": GRAPH_PIPELINE}[level]
    named = set(MODEL_PIPELINE) | set(GRAPH_PIPELINE)
    plugins = sorted(info.name for info in registry.all_passes()
                     if info.kind == "normalize" and info.level == level and info.name not in named)
    return [name for entry in order for name in (plugins if entry == PLUGINS else [entry])]


@dataclass
class Normalized:
    """A normalized model: the gs graph passes edit, plus what export needs to rebuild the proto."""

    graph: gs.Graph
    meta: ModelMeta
    notes: list[str] = field(default_factory=list)

    def to_model(self) -> onnx.ModelProto:
        return to_model(self.graph, self.meta)


def _run(kind_name: str, obj, notes: list[str], level: str = "graph"):
    info = registry.get("normalize", kind_name)
    if info.level != level:
        raise CompileError(f"normalize pass {kind_name} is a {info.level}-level pass, listed in the {level} pipeline")
    try:
        return info.factory(obj, notes)
    except SpacError:
        raise
    except UnicodeDecodeError:
        raise ModelLoadError("a name or string in the model is not valid UTF-8 text") from None
    except Exception as exc:  # noqa: BLE001 - a failing pass must name itself
        raise CompileError(f"normalize pass {kind_name} failed: {first_line(exc)}") from exc


def normalize(model: onnx.ModelProto, copy: bool = True, spec=None) -> Normalized:
    """Run the whole normalization pipeline on *model* (on a copy unless *copy* is False).

    The compiler passes ``copy=False`` for models it loaded itself: a model
    handed in by a caller is never modified, a file's model is nobody else's.
    *spec* (:class:`inputspec.InputSpecs`, chosen for the model when None) is
    where shape inference completes dims the declared inputs leave unknown;
    a callable is asked for it just before that inference, with the inputs'
    facts read from the folded graph (the refusal of hostile shapes has run
    by then; its error is raised after the passes, so a refusal that names a
    node comes first).  The spec returned carries those facts (each input's
    kind: :mod:`.inputfacts`).
    """
    from .inputfacts import input_facts
    from .inputspec import active, choose, declared_inputs

    notes: list[str] = []
    if copy:
        work = onnx.ModelProto()
        work.CopyFrom(model)
    else:
        work = model
    for name in pipeline("model"):
        work = _run(name, work, notes, "model")
    meta = meta_of(work)
    chosen = choose(declared_inputs(work), None, meta.metadata)
    meta.input_spec = chosen if spec is None or callable(spec) else spec
    graph = to_graph(work)
    deferred = None
    for name in pipeline("graph"):
        if name == "infer_shapes_symbolic":  # constants folded: ids reach their tables directly
            facts = input_facts(graph)
            meta.input_spec = meta.input_spec.with_facts(facts)
            if callable(spec):
                try:
                    meta.input_spec = spec(facts)
                except SpacError as exc:  # the input does not run: a refusal naming the node, below, says more
                    deferred = exc
        with active(meta.input_spec):
            _run(name, graph, notes, "graph")
    if deferred is not None:
        raise deferred
    return Normalized(graph, meta, notes)
