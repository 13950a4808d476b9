"""Control flow (If/Loop/Scan): layers inside subgraphs prune under the mask oracle, on every branch taken."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from models import builders, control_flow
from spa_compiler.analysis.rules import control_flow as rules
from spa_compiler.oracle import masked_model
from spa_compiler.pipeline import apply_plan, compile_model, score_groups
from spa_compiler.plan import PlanOptions, make_plan
from spa_compiler.runtime import session

# Inputs that take every branch: If conditions are mean(x) > 0 and, nested, max(x) < 2.
BRANCH_FEEDS = ((0.1, 1.0), (2.5, 3.0), (-1.0, -0.1))  # positive small, positive large, negative
TORCH_EXPORTS = Path(__file__).resolve().parent.parent / "models" / "frameworks" / "torch_control_flow"
TORCH_FEEDS = ((0.1, 1.0), (-10.0, -5.0))  # torch_if: mean(relu(stem(x))) 0.06 (else) and 1.9 (then)


def _feeds(sess, low: float, high: float, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    meta = sess.get_inputs()[0]
    dims = [d if isinstance(d, int) else 2 for d in meta.shape]
    return {meta.name: rng.uniform(low, high, dims).astype(np.float32)}


def _pruned_and_masked(model: onnx.ModelProto, seed: int):
    compiled = compile_model(model)
    groups = [g for g in compiled.analysis.prunable_groups if g.exact]
    plan = make_plan(compiled.analysis, score_groups(compiled, "random", seed=seed, groups=groups),
                     PlanOptions(ratio=0.5))
    pruned, _, _ = apply_plan(compiled, plan)
    return compiled, plan, pruned, masked_model(compiled, plan)


def _max_relative_error(pruned, masked, seed: int, ranges=BRANCH_FEEDS) -> float:
    got, want = session(pruned), session(masked)
    worst = 0.0
    for low, high in ranges:
        feeds = _feeds(want, low, high, seed)
        for a, b in zip(want.run(None, feeds), got.run(None, feeds)):
            worst = max(worst, float(np.abs(a - b).max()) / max(float(np.abs(a).max()), 1e-12))
    return worst


@pytest.mark.parametrize("name", sorted(control_flow.CONTROL_FLOW_MODELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_pruned_equals_masked_original_on_every_branch(name, seed):
    model = control_flow.CONTROL_FLOW_MODELS[name]()
    compiled, plan, pruned, masked = _pruned_and_masked(model, seed)
    assert plan.n_removed > 0
    onnx.checker.check_model(pruned, full_check=True)
    assert _max_relative_error(pruned, masked, seed) < 1e-5


def _body_params(compiled) -> set[str]:
    body = {n.name for g in compiled.graph.subgraphs(recursive=True) for n in g.nodes}
    return {p.tensor for g in compiled.analysis.prunable_groups for p in g.params if p.node in body}


@pytest.mark.parametrize("name,expected", [
    ("if_branches", {"e_w", "e_scale", "tw5", "tb6"}),   # both branches' weights, outer and branch initializers
    ("nested_if", {"iw8", "jw9"}),                        # an If inside an If branch
    ("loop_refine", {"l_w", "lv4"}),                      # the carried map and the per-step output
    ("scan_rnn", {"cw6", "c_r", "c_b"}),                  # the state and the per-step input
])
def test_layers_inside_bodies_are_pruned(name, expected):
    compiled = compile_model(control_flow.CONTROL_FLOW_MODELS[name]())
    assert expected <= _body_params(compiled)


def test_both_branches_lose_the_same_channels():
    compiled, plan, pruned, _ = _pruned_and_masked(control_flow.if_branches(), seed=0)
    shapes = {}
    for node in pruned.graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                shapes.update({t.name: list(t.dims) for t in attribute.g.initializer})
    shapes.update({t.name: list(t.dims) for t in pruned.graph.initializer})
    then_rows, else_rows, head_cols = shapes["tw5"][0], shapes["e_w"][0], shapes["ow11"][1]
    assert then_rows == else_rows == head_cols == 3  # 6 channels, half removed, in both branches at once
    assert shapes["e_scale"][1] == 3


def test_branches_of_different_widths_freeze_with_a_reason():
    compiled = compile_model(control_flow.if_mismatch())
    reasons = [r for g in compiled.analysis.groups for r in g.frozen]
    assert any("subgraphs disagree on these channels" in r for r in reasons), reasons
    compiled, plan, pruned, masked = _pruned_and_masked(control_flow.if_mismatch(), seed=0)
    assert plan.n_removed > 0  # the convolution feeding both branches still prunes
    assert _max_relative_error(pruned, masked, 0) < 1e-5


def test_a_branch_left_out_of_the_coupling_is_caught(monkeypatch):
    """The oracle sees it when the else branch is not cut with the then branch."""
    couplings = rules.If.couplings
    monkeypatch.setattr(rules.If, "couplings",
                        lambda self, node, cx: [[m for m in c if not m.port[0].startswith("else")]
                                                for c in couplings(self, node, cx)])
    compiled, plan, pruned, masked = _pruned_and_masked(control_flow.if_branches(), seed=0)
    with pytest.raises(Exception):  # noqa: B017 - the else branch's widths no longer fit: it cannot run
        _max_relative_error(pruned, masked, 0)


def test_elementwise_branches_on_a_constant_condition_prune():
    """Branches made of elementwise ops only (Relu, Neg) carry the channels through."""
    net = builders.Net("if_elementwise")
    x = builders._cbr(net, "x", 8)
    then_g = onnx.helper.make_graph([onnx.helper.make_node("Relu", [x], ["then_y"])], "then", [],
                                    [onnx.helper.make_tensor_value_info("then_y", onnx.TensorProto.FLOAT, None)])
    else_g = onnx.helper.make_graph([onnx.helper.make_node("Neg", [x], ["else_y"])], "else", [],
                                    [onnx.helper.make_tensor_value_info("else_y", onnx.TensorProto.FLOAT, None)])
    cond = net.init("cond", np.array(True))
    y = net.node("If", [cond], 8, net.hw[x], then_branch=then_g, else_branch=else_g)
    model = net.model(builders._head(net, builders._cbr(net, y, 8)))
    compiled, plan, pruned, masked = _pruned_and_masked(model, seed=0)
    assert plan.n_removed > 0
    assert _max_relative_error(pruned, masked, 0) < 1e-5


@pytest.mark.parametrize("name", ["torch_if", "torch_loop"])
def test_torchscript_if_and_loop_exports_prune_exactly(name):
    """torch.jit.script exports (models/export_torch_control_flow.py): weights of both branches (outer
    initializers) and of the loop body prune; the stem feeding the If stays whole (the condition averages it)."""
    model = onnx.load(str(TORCH_EXPORTS / f"{name}.onnx"))
    compiled, plan, pruned, masked = _pruned_and_masked(model, seed=0)
    pruned_weights = {p.tensor for gid in plan.removed for p in compiled.analysis.groups[gid].params}
    assert {"if": {"a.weight", "b.weight"}, "loop": {"body.weight"}}[name.split("_")[1]] <= pruned_weights
    onnx.checker.check_model(pruned, full_check=True)
    assert _max_relative_error(pruned, masked, 0, TORCH_FEEDS) < 1e-5


def test_the_torch_if_feeds_take_both_branches():
    model = onnx.load(str(TORCH_EXPORTS / "torch_if.onnx"))
    cond = next(n.input[0] for n in model.graph.node if n.op_type == "If")
    model.graph.output.append(onnx.helper.make_tensor_value_info(cond, onnx.TensorProto.BOOL, None))
    sess = session(model)
    assert {bool(sess.run(None, _feeds(sess, low, high, 0))[1]) for low, high in TORCH_FEEDS} == {True, False}
