"""The mask oracle on recurrent layers (LSTM, GRU, RNN) and quantized graphs (QDQ, dynamic int8)."""
from __future__ import annotations

import os
import tempfile
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from models import sequence
from spa_compiler.analysis.rules import recurrent
from spa_compiler.oracle import oracle_check
from spa_compiler.pipeline import apply_plan, compile_model, score_groups
from spa_compiler.plan import PlanOptions, make_plan
from spa_compiler.runtime import random_inputs, session

# dynamic quantization moves with the removed channels' ranges: well under this, unlike a wrong rule (~0.2)
QUANTIZED_TOLERANCE = 0.03
# static quantization is exact, but float kernels see other channel counts and round differently: a value on a
# rounding boundary of a QuantizeLinear can flip by one step (seen: 0.9 % of the output scale)
ONE_STEP_TOLERANCE = 0.02


def _quantized(per_channel: bool) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="spac-test-") as tmp:
        src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(sequence.tagger(), src)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=per_channel)
        return onnx.load(dst)


@pytest.mark.parametrize("name", sorted(sequence.RECURRENT_MODELS))
def test_the_oracle_sees_the_recurrence(name, monkeypatch):
    """Left unmasked, R's input columns carry a removed unit back into the others: the oracle must notice."""
    hidden = recurrent.Recurrent._hidden

    def unmasked(self, node, cx):
        effect = hidden(self, node, cx)
        effect.params = [replace(p, role="passive") if p.role == "consumer" else p for p in effect.params]
        return effect

    monkeypatch.setattr(recurrent.Recurrent, "_hidden", unmasked)
    assert oracle_check(compile_model(sequence.RECURRENT_MODELS[name]()), ratio=0.5).relative_error > 1e-2


def test_bidirectional_units_shrink_both_directions_and_every_size():
    compiled = compile_model(sequence.recurrent_stack())
    lstm = next(g for g in compiled.analysis.prunable_groups
                if any(p.op == "LSTM" and p.role == "producer" for p in g.params))
    assert lstm.n_atoms == 6  # one atom per hidden unit, in both directions
    scores = score_groups(compiled, "l2", groups=[lstm])
    pruned, _, _ = apply_plan(compiled, make_plan(compiled.analysis, scores, PlanOptions(ratio=0.5)))
    node = next(n for n in pruned.graph.node if n.op_type == "LSTM")
    assert helper.get_attribute_value(next(a for a in node.attribute if a.name == "hidden_size")) == 3
    shapes = {i.name: list(i.dims) for i in pruned.graph.initializer}
    assert shapes[node.input[1]] == [2, 12, 8] and shapes[node.input[2]] == [2, 12, 3]
    assert shapes[node.input[3]] == [2, 24]
    gru = next(n for n in pruned.graph.node if n.op_type == "GRU")
    assert shapes[gru.input[1]][2] == 6  # reads both directions' 3 kept units


def test_zero_states_built_at_run_time_do_not_tie_layers():
    compiled = compile_model(sequence.tagger())
    assert any("drop_zero_states: 4" in note for note in compiled.notes)
    lstm_groups = [g for g in compiled.analysis.prunable_groups
                   if any(p.op == "LSTM" and p.role == "producer" for p in g.params)]
    assert len(lstm_groups) == 2, "each layer's hidden units are their own group"


def test_state_inputs_freeze_the_hidden_units():
    """Streaming models take h0/c0 as inputs: their width is part of the interface, so it stays."""
    s = sequence.Seq("streaming")
    s.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, "N", 4]),
                helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, "N", 6])]
    y = s.node("LSTM", ["x", s.weight("W", (1, 24, 4)), s.weight("R", (1, 24, 6)), "", "", "h0"], n_out=1,
               hidden_size=6)[0]
    out = s.linear(s.one("Squeeze", [y, s.init("ax", np.array([1], np.int64))]), 6, 3)
    compiled = compile_model(s.model([out]))
    group = next(g for g in compiled.analysis.groups if any(p.op == "LSTM" and p.role == "producer" for p in g.params))
    assert not group.prunable and any("reaches graph input h0" in r for r in group.frozen)


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_int8_tagger_prunes_within_quantization_tolerance(per_channel):
    """onnxruntime's quantize_dynamic writes DynamicQuantizeLSTM, MatMulInteger and a uint8 embedding."""
    model = _quantized(per_channel)
    ops = {n.op_type for n in model.graph.node}
    assert {"DynamicQuantizeLSTM", "MatMulInteger", "DynamicQuantizeLinear", "DequantizeLinear"} <= ops
    compiled = compile_model(model)
    groups = compiled.analysis.prunable_groups
    assert sorted(g.n_atoms for g in groups) == [6, 8, 8]  # embedding features, two LSTMs' hidden units
    assert all(not g.exact for g in groups)
    for seed in (0, 1):
        result = oracle_check(compiled, ratio=0.5, seed=seed, inexact=True)
        assert result.removed_atoms > 0
        assert result.relative_error < QUANTIZED_TOLERANCE


def test_dynamic_int8_oracle_sees_the_recurrence(monkeypatch):
    hidden = recurrent.Recurrent._hidden
    monkeypatch.setattr(recurrent.Recurrent, "_hidden", lambda self, node, cx: replace_roles(hidden(self, node, cx)))
    result = oracle_check(compile_model(_quantized(False)), ratio=0.5, inexact=True)
    assert result.relative_error > 3 * QUANTIZED_TOLERANCE


def replace_roles(effect):
    effect.params = [replace(p, role="passive") if p.role == "consumer" else p for p in effect.params]
    return effect


def test_dynamic_int8_tagger_keeps_its_interface():
    model = _quantized(True)
    compiled = compile_model(model)
    scores = score_groups(compiled, "l2")
    pruned, _, _ = apply_plan(compiled, make_plan(compiled.analysis, scores, PlanOptions(ratio=0.3)))
    feeds = random_inputs(session(model), batch=2)
    before, after = session(model).run(None, feeds), session(pruned).run(None, feeds)
    assert [a.shape for a in before] == [b.shape for b in after]
    sizes = sorted(int(a.i) for n in pruned.graph.node if n.op_type == "DynamicQuantizeLSTM"
                   for a in n.attribute if a.name == "hidden_size")
    assert sizes == [6, 6]


@pytest.mark.parametrize("name", ["residual", "depthwise", "linear_layouts", "se_block", "concat_dense"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_qdq_static_int8_is_exact(name, per_channel):
    """QDQ models (onnxruntime's quantize_static): weights are DequantizeLinear(int8 initializer), activations
    pass Quantize/DequantizeLinear with fixed scales; slices land on the int8 weights, int32 biases and
    per-channel scales, and pruning stays exact."""
    from models import builders

    model = sequence.quantize_static(builders.RULE_MODELS[name](), per_channel=per_channel)
    compiled = compile_model(model)
    assert len(compiled.analysis.prunable_groups) == len(compiled.analysis.groups) - 1  # all but the output's
    result = oracle_check(compiled, ratio=0.5)
    assert result.removed_atoms > 0
    assert result.relative_error < ONE_STEP_TOLERANCE
    scores = score_groups(compiled, "l2")
    pruned, _, _ = apply_plan(compiled, make_plan(compiled.analysis, scores, PlanOptions(ratio=0.5)))
    before = {i.name: (i.data_type, list(i.dims)) for i in model.graph.initializer}
    after = {i.name: (i.data_type, list(i.dims)) for i in pruned.graph.initializer}
    shrunk = [n for n in after if n in before and after[n][1] != before[n][1]]
    assert any(after[n][0] == TensorProto.INT8 for n in shrunk), "int8 weights themselves are sliced"
    if per_channel:
        assert any(n.endswith("_scale") for n in shrunk), "per-channel scales are sliced with them"


@pytest.mark.parametrize("name", ["residual", "depthwise", "grouped", "linear_layouts", "se_block", "flatten_gemm"])
def test_qoperator_static_int8_is_exact(name):
    """QOperator models: QLinearConv (depthwise and grouped too), QLinearMatMul, QGemm, QLinearAdd/Mul,
    QLinearSigmoid, QLinearGlobalAveragePool between fixed-scale uint8 tensors; per-channel scales slice."""
    from models import builders

    compiled = compile_model(sequence.quantize_static(builders.RULE_MODELS[name](), qdq=False))
    ops = {n.op for n in compiled.graph.nodes}
    assert "QLinearConv" in ops and "Conv" not in ops
    assert len(compiled.analysis.prunable_groups) == len(compiled.analysis.groups) - 1  # all but the output's
    for seed in (0, 1):
        result = oracle_check(compiled, ratio=0.5, seed=seed)
        assert result.removed_atoms > 0
        assert result.relative_error < ONE_STEP_TOLERANCE


@pytest.mark.parametrize("name", ["residual", "se_block", "linear_layouts"])
def test_dynamic_int8_convolutions_prune_within_quantization_tolerance(name):
    """quantize_dynamic on convolutions writes ConvInteger (and MatMulInteger) after DynamicQuantizeLinear."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from models import builders

    with tempfile.TemporaryDirectory(prefix="spac-test-") as tmp:
        src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(builders.RULE_MODELS[name](), src)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "MatMul", "Gemm"])
        compiled = compile_model(onnx.load(dst))
    assert "ConvInteger" in {n.op for n in compiled.graph.nodes}
    assert len(compiled.analysis.prunable_groups) == len(compiled.analysis.groups) - 1  # all but the output's
    for seed in (0, 1):
        result = oracle_check(compiled, ratio=0.5, seed=seed, inexact=True)
        assert result.removed_atoms > 0
        assert result.relative_error < QUANTIZED_TOLERANCE
