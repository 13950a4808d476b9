"""``--ratio`` with no --global/--local: every criterion's default plan is measured against the
sensitivity-allocated plan at the same MACs, and a plan whose outputs collapsed never wins
(spa_compiler.ranking; docs/realmodels.md, "Light budget (ratio 0.1)")."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import spa_compiler
from spa_compiler.ranking import collapsed, ranked_error
from tests.test_ranking import _one_sensitive_branch


def _threshold_net() -> onnx.ModelProto:
    """``y = relu(sum(h) + 1e-3 * sum(g) - 55)``: six units ``h`` near 10 each carry the output over a
    threshold, so removing any one of them sends it to zero (oskut-ws-augment-60p's 61-channel concat before
    its sigmoid); twenty units ``g`` of the same cost barely reach it.  L2 ranks ``h``'s units lowest
    (small weights), so the same ratio in every group removes one of them."""
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((8, 6)) * 0.01).astype(np.float32)
    v = (rng.standard_normal((8, 20)) * 1.0).astype(np.float32)
    inits = [numpy_helper.from_array(a, "A"), numpy_helper.from_array(np.full(6, 10, np.float32), "a_bias"),
             numpy_helper.from_array(v, "V"), numpy_helper.from_array(np.ones((6, 1), np.float32), "w_h"),
             numpy_helper.from_array(np.full((20, 1), 1e-3, np.float32), "w_g"),
             numpy_helper.from_array(np.array([-55.0], np.float32), "threshold")]
    nodes = [helper.make_node("MatMul", ["x", "A"], ["ha"]), helper.make_node("Add", ["ha", "a_bias"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["h"]), helper.make_node("MatMul", ["x", "V"], ["ga"]),
             helper.make_node("Relu", ["ga"], ["g"]), helper.make_node("MatMul", ["h", "w_h"], ["yh"]),
             helper.make_node("MatMul", ["g", "w_g"], ["yg"]), helper.make_node("Add", ["yh", "yg"], ["ys"]),
             helper.make_node("Add", ["ys", "threshold"], ["yt"]), helper.make_node("Relu", ["yt"], ["y"])]
    graph = helper.make_graph(nodes, "threshold_net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_default_l2_ratio_spares_the_group_whose_removal_collapses_the_outputs():
    model = _threshold_net()
    per_group = spa_compiler.prune(model, ratio=0.2, global_ranking=False)
    assert per_group.report["fidelity"]["cosine"] <= 0.0  # the same ratio everywhere: one unit of h, y == 0
    chosen = spa_compiler.prune(model, ratio=0.2)
    ranking = chosen.report["ranking"]
    assert set(ranking["errors"]) == {"local", "sensitivity"}
    assert ranking["chosen"] == "sensitivity" and ranking["collapsed"] == ["local"]
    assert chosen.report["fidelity"]["cosine"] > 0.99
    assert chosen.report["macs"]["after"] <= per_group.report["macs"]["after"] * 1.005


def test_default_l2_ratio_allocates_by_measured_sensitivity():
    """Two branches alike by weight norms, one 900x more sensitive: the per-group plan cuts both alike,
    the measured allocation takes the MACs from the insensitive one (same MACs, lower error)."""
    model = _one_sensitive_branch()
    chosen = spa_compiler.prune(model, ratio=0.3)
    per_group = spa_compiler.prune(model, ratio=0.3, global_ranking=False)
    assert per_group.report["ranking"] is None
    assert chosen.report["ranking"]["chosen"] == "sensitivity"
    assert chosen.report["fidelity"]["rel_error"] < 0.5 * per_group.report["fidelity"]["rel_error"]
    assert chosen.report["macs"]["after"] <= per_group.report["macs"]["after"] * 1.005


def test_collapsed_outputs_rank_after_any_correlated_ones():
    gone = {"finite": True, "cosine": 0.0, "rel_error": 1.0, "mismatch": None}
    noisy = {"finite": True, "cosine": 0.7, "rel_error": 1.2, "mismatch": None}
    assert collapsed(gone) and not collapsed(noisy)
    assert ranked_error(noisy) == 1.2 < ranked_error(gone)
    assert collapsed({**noisy, "finite": False})


def _redundant_mlp() -> onnx.ModelProto:
    """``y = relu(x W) V`` with 4 of its 12 hidden units near zero on both sides: the per-group plan at
    ratio 0.25 removes three of those and moves the outputs by ~1e-4."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 12)).astype(np.float32)
    v = rng.standard_normal((12, 3)).astype(np.float32)
    w[:, :4] *= 1e-3
    v[:4] *= 1e-3
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "V"], ["y"])]
    graph = helper.make_graph(nodes, "redundant_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(v, "V")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_per_group_plan_that_already_measures_well_is_written_without_the_search():
    chosen = spa_compiler.prune(_redundant_mlp(), ratio=0.25)
    ranking = chosen.report["ranking"]
    assert ranking["chosen"] == "local" and ranking["groups_probed"] == 0
    assert set(ranking["errors"]) == {"local"} and ranking["errors"]["local"] <= 0.05
