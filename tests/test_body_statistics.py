"""OBSPA statistics of consumer layers inside If/Loop/Scan bodies (spa_compiler/obspa/bodies.py)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import spa_compiler
from models.control_flow import if_branches, loop_refine, nested_if, scan_rnn
from spa_compiler.obspa import statistics
from spa_compiler.pipeline import compile_model, consumer_nodes

RNG = np.random.default_rng(3)
W1 = RNG.standard_normal((4, 6)).astype(np.float32)
W2 = RNG.standard_normal((6, 3)).astype(np.float32)
V = RNG.standard_normal((4, 3)).astype(np.float32)


def _branch_mlp() -> onnx.ModelProto:
    """``y = mean(x) > 0 ? relu(x W1) W2 : x V``: the then branch's second MatMul reads a value of the branch."""
    then = helper.make_graph([helper.make_node("MatMul", ["x", "W1"], ["t_h"], name="t_mm1"),
                              helper.make_node("Relu", ["t_h"], ["t_r"], name="t_relu"),
                              helper.make_node("MatMul", ["t_r", "W2"], ["t_y"], name="t_mm2")],
                             "then", [], [helper.make_tensor_value_info("t_y", TensorProto.FLOAT, ["N", 3])],
                             [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(W2, "W2")])
    other = helper.make_graph([helper.make_node("MatMul", ["x", "V"], ["e_y"], name="e_mm")], "else", [],
                              [helper.make_tensor_value_info("e_y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(V, "V")])
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], keepdims=0, name="mean"),
             helper.make_node("Greater", ["m", "zero"], ["c"], name="positive"),
             helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then, else_branch=other)]
    graph = helper.make_graph(nodes, "branch_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _stats(model, source="synthetic", calib=None):
    compiled = compile_model(model)
    consumers = consumer_nodes(compiled)
    return consumers, statistics.collect(compiled, consumers, source, calib, samples=32)


def test_a_branch_layer_gets_the_statistics_of_the_values_it_reads():
    x = np.abs(RNG.standard_normal((16, 4))).astype(np.float32)  # mean > 0: every run takes the then branch
    consumers, stats = _stats(_branch_mlp(), "calib", {"x": x})
    assert "t_mm2" in {n.name for n in consumers}
    h = np.maximum(x @ W1, 0).astype(np.float64)
    np.testing.assert_allclose(stats["t_mm2"].h, h.T @ h / len(h), rtol=1e-4)
    np.testing.assert_allclose(stats["t_mm2"].mean, h.mean(axis=0), rtol=1e-4)


def test_a_branch_not_taken_adds_no_rows():
    x = -np.abs(RNG.standard_normal((16, 4))).astype(np.float32)  # mean < 0: the else branch only
    _, stats = _stats(_branch_mlp(), "calib", {"x": x})
    assert "t_mm2" not in stats


def test_a_scan_body_layer_sees_every_step_of_its_scanned_input():
    """The per-step slices x_t stacked over the steps are the scanned tensor: the same second moment."""
    model = scan_rnn()
    compiled = compile_model(model)
    feats = next(n for n in compiled.graph.nodes if n.op == "Scan").inputs[1].name
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info(feats, TensorProto.FLOAT, None))
    x = RNG.standard_normal((2, 5, 4)).astype(np.float32)
    import onnxruntime as ort

    scanned = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        [feats], {"x": x})[0].reshape(-1, 7).astype(np.float64)
    _, stats = _stats(model, "calib", {"x": x})
    np.testing.assert_allclose(stats["c_in"].h, scanned.T @ scanned / len(scanned), rtol=1e-4)


@pytest.mark.parametrize("build, inside", [(if_branches, {"t_conv", "e_conv"}), (nested_if, {"it_conv", "ie_conv"}),
                                           (loop_refine, {"l_conv", "l_view"}), (scan_rnn, {"c_in", "c_rec"})])
def test_every_body_consumer_is_measured(build, inside):
    consumers, stats = _stats(build())
    assert inside <= {n.name for n in consumers}
    assert all(stats[name].rows > 0 for name in inside)


def test_loop_body_layers_count_every_iteration():
    _, stats = _stats(loop_refine())
    assert stats["l_conv"].rows == 3 * stats["conv9"].rows  # three trips, each a sample of the carried map


@pytest.mark.parametrize("build", [loop_refine, scan_rnn, _branch_mlp])
def test_obspa_prunes_control_flow_models_with_body_statistics(build):
    result = spa_compiler.prune(build(), ratio=0.3, criterion="obspa")
    assert result.plan.removed
    assert np.isfinite(result.report["fidelity"]["rel_error"])


def test_a_graph_input_read_only_inside_a_branch_keeps_its_shape():
    """The shape re-inference after a rewrite forgot the shape of a main-graph input that only a branch
    reads (the body lists it among its tensors), and the pruned model failed onnx.checker (exit 3) where
    the dense one runs."""
    result = spa_compiler.prune(_branch_mlp(), ratio=0.3, criterion="l2")
    x = result.model.graph.input[0]
    assert [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim] == ["N", 4]
    onnx.checker.check_model(result.model)
