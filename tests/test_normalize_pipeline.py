"""The normalization pipeline: its order lives in passes/pipeline.py, levels are declared, plugins run."""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs
import pytest

import spa_compiler
from models import builders
from spa_compiler import registry
from spa_compiler.normalize import pipeline
from spa_compiler.passes.pipeline import GRAPH_PIPELINE, MODEL_PIPELINE, PLUGINS
from spa_compiler.registry import register


@pytest.fixture
def scratch_registry(monkeypatch):
    """Passes registered by a test vanish after it."""
    registry.load_passes()
    for kind in registry.KINDS:
        monkeypatch.setitem(registry._REGISTRY, kind, dict(registry._REGISTRY[kind]))


def test_every_builtin_normalization_has_a_place_and_level():
    builtin = {p.name: p for p in registry.all_passes() if p.kind == "normalize"}
    listed = (set(MODEL_PIPELINE) | set(GRAPH_PIPELINE)) - {PLUGINS}
    assert set(builtin) == listed, "a built-in normalization must be named in passes/pipeline.py"
    assert {builtin[n].level for n in MODEL_PIPELINE if n != PLUGINS} == {"model"}
    assert {builtin[n].level for n in GRAPH_PIPELINE if n != PLUGINS} == {"graph"}
    assert pipeline("graph") == [n for n in GRAPH_PIPELINE if n != PLUGINS]


def test_plugin_normalizations_run_in_their_slot(scratch_registry):
    seen = {}

    @register("normalize", "zz_plugin_model", level="model")
    def model_plugin(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
        """A plugin at the model level."""
        seen["model"] = isinstance(model, onnx.ModelProto)
        notes.append("zz_plugin_model: ran")
        return model

    @register("normalize", "zz_plugin_graph")
    def graph_plugin(graph: gs.Graph, notes: list[str]) -> None:
        """A plugin at the graph level: sees folded constants and inferred shapes."""
        seen["graph"] = isinstance(graph, gs.Graph)
        seen["shaped"] = all(t.shape is not None for t in graph.tensors().values() if isinstance(t, gs.Variable))
        notes.append("zz_plugin_graph: ran")

    order = pipeline("graph")
    assert order.index("group_norm_as_split") < order.index("zz_plugin_graph") < order.index("unshare_initializers")
    assert pipeline("model")[-1] == "zz_plugin_model"
    result = spa_compiler.prune(builders.demo_cnn(), ratio=0.3)
    assert {"zz_plugin_model: ran", "zz_plugin_graph: ran"} <= set(result.report["normalize"])
    assert seen == {"model": True, "graph": True, "shaped": True}


def test_a_normalization_must_declare_a_known_level(scratch_registry):
    with pytest.raises(ValueError, match="level must be one of"):
        register("normalize", "zz_bad", level="proto")(lambda graph, notes: None)
