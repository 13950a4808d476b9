"""Probe runs from the last cut before the first changed layer compute what the whole masked graph does.

:mod:`spa_compiler.suffix` skips the dense prefix of a probe (issue 12 item 5: most of OBSPA's time on a
ResNet-50 was whole forward passes of one-group probes); the outputs must be the whole run's.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from models.builders import resnet50
from spa_compiler import fidelity
from spa_compiler.budget import TARGET_PROBE_RATIOS, MaxErrorSearch
from spa_compiler.pipeline import compile_model, score_groups
from spa_compiler.plan import PlanOptions


def _model(ids_only: bool):
    """A small ResNet; *ids_only*: its only output the ArgMax of its logits (measured through the score tap)."""
    model = resnet50(hw=64, blocks=(1, 1, 1, 1), width=16, classes=10)
    if ids_only:
        logits = model.graph.output[0].name
        model.graph.node.append(helper.make_node("ArgMax", [logits], ["ids"], axis=-1, keepdims=0))
        del model.graph.output[:]
        model.graph.output.append(helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"]))
    return model


@pytest.fixture(scope="module", params=[False, True], ids=["logits", "ids-only"])
def search(request):
    compiled = compile_model(_model(request.param), run_dense=True, measure=(0, "auto"))
    scores = score_groups(compiled, "l2")
    measurement, _ = fidelity.try_measure_dense(compiled.to_model(), None, 0, "auto", required=True,
                                                spec=compiled.spec, dense=compiled.dense)
    return MaxErrorSearch(compiled, scores, PlanOptions(global_ranking=False), measurement, float("inf"), 0.75,
                          probe_ratios=TARGET_PROBE_RATIOS)


def test_probes_from_the_cut_equal_whole_masked_runs(search):
    runner, reference = search._runner, search.measurement.reference
    batches = search.measurement.inputs.batches
    cuts = []
    for group in search.groups:
        plan = search.plan_for({group.id: 0.5})
        probe = search.error(plan, probe=True)
        keep = len(runner._suffix._recorded[next(iter(runner._suffix._recorded))])
        whole = fidelity.relative_error(runner.fidelity(
            search.compiled.analysis, plan, None, fidelity.Reference(reference.names, reference.outputs[:keep]),
            batches[:keep]))
        assert probe == pytest.approx(whole, rel=1e-5, abs=1e-7) and probe > 0
        changed = {p.tensor for p in search.compiled.analysis.groups[group.id].params}
        cuts.append(runner._suffix.cut_for(sorted(changed)))
    assert runner._cutting
    assert len({c for c in cuts if c}) >= 3  # probes deep in the network start at different cuts


def test_every_cut_boundary_is_produced_before_the_cut(search):
    search.error(search.plan_for({search.groups[-1].id: 0.5}), probe=True)
    suffix = search._runner._suffix
    for position, boundary in suffix.boundaries.items():
        before = {t.name for node in suffix.nodes[:position] for t in node.outputs}
        assert boundary and {t.name for t in boundary} <= before
        assert np.all(np.diff(suffix.cuts) > 0)


def _conv_sum_with_exposed_branch():
    """Two 1x1 Convs whose weights are graph inputs, added, one Conv's output also a graph output: the
    shape of a recording run's graph (weights fed, tensors at a cut exposed), which onnxruntime 1.32's
    ORT_ENABLE_ALL optimizers refuse ("Failed to find node output ...")."""
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 4])]
    inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
               for name, shape in [("Wa", [8, 8, 1, 1]), ("Ba", [8]), ("Wb", [8, 8, 1, 1]), ("Bb", [8])]]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "W0", "B0"], ["y0"]), helper.make_node("Relu", ["y0"], ["r0"]),
             helper.make_node("Conv", ["r0", "Wa", "Ba"], ["ya"]), helper.make_node("Conv", ["r0", "Wb", "Bb"], ["yb"]),
             helper.make_node("Add", ["yb", "ya"], ["s"]), helper.make_node("Relu", ["s"], ["out"])]
    weights = [numpy_helper.from_array(rng.standard_normal((8, 4, 1, 1)).astype(np.float32), "W0"),
               numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "B0")]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("out", "ya")]
    graph = helper.make_graph(nodes, "exposed", inputs, outputs, weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_session_of_a_graph_the_layout_optimizers_refuse_runs_quietly(capsys):
    """No "EP Error" banner (open-nsfw's --max-error search printed one per recording run), and the
    session computes what an unoptimized one does."""
    import onnxruntime as ort

    from spa_compiler.runtime import session

    model = _conv_sum_with_exposed_branch()
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((2, 8, 8, 4)).astype(np.float32),
             "Wa": rng.standard_normal((8, 8, 1, 1)).astype(np.float32), "Ba": np.ones(8, np.float32),
             "Wb": rng.standard_normal((8, 8, 1, 1)).astype(np.float32), "Bb": np.zeros(8, np.float32)}
    got = session(model, providers=["CPUExecutionProvider"]).run(None, feeds)
    assert "EP Error" not in capsys.readouterr().out
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for mine, reference in zip(got, plain.run(None, feeds)):
        np.testing.assert_allclose(mine, reference, rtol=1e-5, atol=1e-5)
