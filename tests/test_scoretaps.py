"""Integer outputs made by ArgMax/TopK: the float scores they are computed from are measured too."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import spa_compiler
from spa_compiler.inputspec import for_model
from spa_compiler.runtime import session
from spa_compiler.scoretaps import exposing, score_tensors

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "models" / "trained" / "digits_cnn.onnx"


def _gated_tagger() -> onnx.ModelProto:
    """Two score heads; the output is one head's class ids where the other's ArgMax is not 0 (rawi_ensemble's
    pattern), a TopK's indices, a float output and an ArgMax that feeds no output."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((4, 5)).astype(np.float32), f"w{i}") for i in range(3)]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["gate_scores"]),
             helper.make_node("MatMul", ["x", "w1"], ["class_scores"]),
             helper.make_node("MatMul", ["x", "w2"], ["other"]),
             helper.make_node("ArgMax", ["gate_scores"], ["gate_ids"], axis=-1, keepdims=0),
             helper.make_node("ArgMax", ["class_scores"], ["class_ids"], axis=-1, keepdims=0),
             helper.make_node("ArgMax", ["other"], ["unused_ids"], axis=-1, keepdims=0),
             helper.make_node("Equal", ["gate_ids", "zero"], ["bare"]),
             helper.make_node("Where", ["bare", "zero", "class_ids"], ["gated"]),
             helper.make_node("Relu", ["other"], ["relu_other"]),
             helper.make_node("TopK", ["relu_other", "k"], ["top_values", "top_ids"], axis=-1),
             helper.make_node("Shape", ["x"], ["x_shape"])]
    consts = [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array([2], np.int64), "k")]
    graph = helper.make_graph(nodes, "tagger", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("gated", TensorProto.INT64, ["n"]),
                               helper.make_tensor_value_info("top_values", TensorProto.FLOAT, ["n", 2]),
                               helper.make_tensor_value_info("x_shape", TensorProto.INT64, [2]),
                               helper.make_tensor_value_info("other", TensorProto.FLOAT, ["n", 5])],
                              weights + consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_integer_outputs_are_followed_back_to_the_scores_their_ids_come_from():
    model = _gated_tagger()
    # the TopK's indices are no output (its values are, and are measured as they are); "other" is an output
    assert score_tensors(model) == ["gate_scores", "class_scores"]
    model.graph.output.append(helper.make_tensor_value_info("top_ids", TensorProto.INT64, ["n", 2]))
    assert score_tensors(model) == ["gate_scores", "class_scores", "relu_other"]
    exposed, names = exposing(model, ["gated", "class_scores", "missing"], 2**30)
    assert names == ["gated", "class_scores"] and len(model.graph.output) == 5  # the input model is unchanged
    out = session(exposed).run(names, {"x": np.ones((3, 4), np.float32)})
    assert out[1].shape == (3, 5)


def _ids_only(tmp_path) -> Path:
    """The digits CNN with ArgMax of its logits as its only output."""
    model = onnx.load(str(DIGITS))
    logits = model.graph.output[0].name
    model.graph.node.append(helper.make_node("ArgMax", [logits], ["ids"], axis=-1, keepdims=0))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"]))
    path = tmp_path / "ids.onnx"
    onnx.save(model, str(path))
    return path


def _logits_error(dense: Path, pruned: onnx.ModelProto) -> float:
    """The logits' relative L2 error on the measurement inputs, recomputed here from both models."""
    sessions = [session(exposing(m, ["logits"], 2**30)[0]) for m in (onnx.load(str(dense)), pruned)]
    spec = for_model(onnx.load(str(dense)))
    feeds = [spec.feeds(seed=start, batch=8, noise="auto") for start in (0, 8)]
    a, b = (np.concatenate([s.run(["logits"], f)[0] for f in feeds]).astype(np.float64) for s in sessions)
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


@pytest.mark.parametrize("limit", [0.1, 0.3])
def test_max_error_bounds_the_scores_behind_an_ids_output(tmp_path, limit):
    path = _ids_only(tmp_path)
    result = spa_compiler.prune(str(path), max_error=limit, round_to=1)  # exact widths: fine steps
    outputs = result.report["fidelity"]["outputs"]
    assert set(outputs) == {"ids", "logits"} and outputs["logits"]["kind"] == "float"
    error = _logits_error(path, result.model)
    assert 0 < error <= limit
    assert outputs["logits"]["rel_error"] == pytest.approx(error, rel=1e-3)
    assert result.report["max_error"]["measured"] >= error - 1e-6
    assert result.report["macs"]["after"] < result.report["macs"]["before"]
