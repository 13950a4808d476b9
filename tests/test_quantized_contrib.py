"""onnxruntime's contrib quantized ops (MatMulNBits, QLinearConcat) and batch-first LSTMs under the mask oracle."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from models import builders, quantized_contrib, sequence
from spa_compiler.analysis.rules import quantized
from spa_compiler.oracle import masked_model, oracle_check
from spa_compiler.pipeline import apply_plan, compile_model, score_groups
from spa_compiler.plan import PlanOptions, make_plan
from spa_compiler.runtime import random_inputs, session

ONE_STEP_TOLERANCE = 0.02  # fixed-scale requantization: a value on a rounding boundary may flip (as for QLinearConv)


def _nodes(model: onnx.ModelProto, op: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op]


@pytest.mark.parametrize("symmetric", [False, True])
def test_matmul_nbits_prunes_rows_and_whole_blocks_exactly(symmetric):
    """Output features as rows of B, scales, zero points and bias; input features in blocks of 16."""
    compiled = compile_model(quantized_contrib.matmul_nbits(symmetric))
    widths = sorted(g.n_atoms for g in compiled.analysis.prunable_groups)
    assert widths == [3, 4]  # 48 and 64 features read by the next layer in blocks of 16
    for seed in (0, 1):
        result = oracle_check(compiled, ratio=0.5, seed=seed)
        assert result.removed_atoms > 0
        assert result.relative_error < 1e-5, result


def test_matmul_nbits_attributes_and_packed_zero_points_follow_the_cut():
    compiled = compile_model(quantized_contrib.matmul_nbits())
    plan = make_plan(compiled.analysis, score_groups(compiled, "l2"), PlanOptions(ratio=0.5))
    pruned, _, _ = apply_plan(compiled, plan)
    inits = {i.name: numpy_helper.to_array(i) for i in pruned.graph.initializer}
    for node in _nodes(pruned, "MatMulNBits"):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        b, scales = inits[node.input[1]], inits[node.input[2]]
        assert b.shape[0] == attrs["N"] and b.shape[1] * attrs["block_size"] == attrs["K"]
        assert scales.shape == b.shape[:2]
        assert inits[node.input[3]].shape == (b.shape[0], (b.shape[1] + 1) // 2)  # two 4-bit points per byte
    # the pruned int4 model computes what its own dequantized float weights compute
    feeds = random_inputs(session(pruned), batch=2)
    got = session(pruned).run(None, feeds)[0]
    want = session(quantized_contrib.dequantized(pruned)).run(None, feeds)[0]
    assert np.abs(got - want).max() < 1e-4


def test_zero_points_left_packed_for_the_old_blocks_are_caught(monkeypatch):
    pack = quantized.pack_nibbles
    monkeypatch.setattr(quantized, "pack_nibbles", lambda codes: pack(codes[..., ::-1]))  # blocks out of order
    compiled = compile_model(quantized_contrib.matmul_nbits())
    result = oracle_check(compiled, ratio=0.5, seed=0)
    assert result.relative_error > 1e-3


def test_matmul_nbits_with_act_order_freezes_with_a_reason():
    model = quantized_contrib.matmul_nbits()
    node = _nodes(model, "MatMulNBits")[1]  # reads the first layer's features
    k = next(a.i for a in node.attribute if a.name == "K")
    model.graph.initializer.append(numpy_helper.from_array(np.arange(k, dtype=np.int32) // 16, "g_idx"))
    node.input.append("g_idx")
    reasons = [r for g in compile_model(model).analysis.groups for r in g.frozen]
    assert any("g_idx reorders the input features" in r for r in reasons), reasons


def test_qlinear_concat_is_exact():
    compiled = compile_model(quantized_contrib.qlinear_concat())
    assert len(compiled.analysis.prunable_groups) == 1
    for seed in (0, 1):
        result = oracle_check(compiled, ratio=0.5, seed=seed)
        assert result.removed_atoms > 0 and result.relative_error < 1e-5


@pytest.mark.parametrize("name", ["concat_dense", "split_branches"])
def test_qoperator_concats_from_the_quantizer_prune(name):
    """quantize_static(QOperator) writes QLinearConcat for DenseNet-style concats: every group but the output's."""
    compiled = compile_model(sequence.quantize_static(builders.RULE_MODELS[name](), qdq=False))
    assert "QLinearConcat" in {n.op for n in compiled.graph.nodes}
    assert len(compiled.analysis.prunable_groups) == len(compiled.analysis.groups) - 1
    result = oracle_check(compiled, ratio=0.5, seed=0)
    assert result.removed_atoms > 0 and result.relative_error < ONE_STEP_TOLERANCE


def test_batch_first_lstm_prunes_hidden_units_exactly():
    """layout=1 keeps hidden units on the last axis; onnxruntime runs it only as the time-major equivalent."""
    compiled = compile_model(sequence.batch_first_lstm())
    hidden = [g for g in compiled.analysis.prunable_groups
              if any(p.op == "LSTM" and p.role == "producer" for p in g.params)]
    assert [g.n_atoms for g in hidden] == [6]
    for seed in (0, 1):
        plan = make_plan(compiled.analysis, score_groups(compiled, "random", seed=seed), PlanOptions(ratio=0.5))
        pruned, masked = apply_plan(compiled, plan)[0], masked_model(compiled, plan)
        got, want = session(sequence.time_major(pruned)), session(sequence.time_major(masked))
        feeds = random_inputs(want, seed=seed)
        assert np.abs(got.run(None, feeds)[0] - want.run(None, feeds)[0]).max() < 1e-5
        lstm = _nodes(pruned, "LSTM")[0]
        assert next(a.i for a in lstm.attribute if a.name == "hidden_size") < 6


def test_qlinear_sigmoid_shapes_come_from_onnx_inference_when_symbolic_inference_gives_up():
    """ONNX infers no shape for the contrib QLinearSigmoid; it is carried through it (shapes.SHAPE_PRESERVING),
    so it no longer freezes its group where onnxruntime's symbolic inference stops elsewhere (here at Mish,
    which opset 17 does not define: the group stays frozen by the QLinearLeakyRelu after it)."""
    compiled = compile_model(sequence.quantize_static(builders.RULE_MODELS["activations"](), qdq=False))
    reasons = [r for g in compiled.analysis.groups for r in g.frozen]
    assert not any("QLinearSigmoid" in r for r in reasons), reasons
    sigmoid = next(n for n in compiled.graph.nodes if n.op == "QLinearSigmoid")
    assert sigmoid.outputs[0].shape is not None


def test_every_int8_lstm_of_a_stack_counts_every_time_step():
    """ONNX inference stops at DynamicQuantizeLSTM; the concrete shapes after it come from the symbolic
    inference, so the second LSTM (and the head) count all 7 steps, not one (the MACs target's total)."""
    from spa_compiler.cost import recurrent_macs
    from spa_compiler.shapes import concrete_shapes

    compiled = compile_model(sequence.quantize(sequence.tagger(hidden=8)))
    shapes = concrete_shapes(compiled.graph, compiled.spec)
    first, second = [n for n in compiled.graph.nodes if n.op == "DynamicQuantizeLSTM"]
    batch = shapes[first.inputs[0].name][1]
    assert shapes[first.inputs[0].name] == [7, batch, 6] and shapes[second.inputs[0].name] == [7, batch, 16]
    steps = 7 * batch * 2  # time steps x batch rows x directions
    assert recurrent_macs(second, shapes) == (steps * 32 * 16, steps * 32 * 8)
