"""OBSPA on dynamically quantized consumers: statistics, OBS costs and compensation on the integer grid.

onnxruntime's dynamic int8 quantization writes ``MatMulInteger`` after ``DynamicQuantizeLinear`` and
``DynamicQuantizeLSTM``; OBSPA used to have no statistics there and ranked them by magnitude (obspa
equalled l2).  Now it takes the statistics of the float activation before quantization, scores with OBS
on the dequantized weights and writes compensated weights back on the same scale and zero point.
"""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime.quantization")

import spa_compiler  # noqa: E402
from models import builders  # noqa: E402
from models.sequence import quantize, tagger  # noqa: E402
from spa_compiler.pipeline import compile_model, consumer_nodes  # noqa: E402


@pytest.fixture(scope="module")
def int8_tagger():
    return quantize(tagger(hidden=8))


def _initializers(model) -> dict:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_int8_consumers_get_statistics_and_obs_costs(int8_tagger):
    compiled = compile_model(int8_tagger)
    ops = sorted({n.op for n in consumer_nodes(compiled)})
    assert ops == ["DynamicQuantizeLSTM", "MatMulInteger"]
    obspa = spa_compiler.prune(int8_tagger, ratio=0.25, criterion="obspa", global_ranking=False, samples=32)
    l2 = spa_compiler.prune(int8_tagger, ratio=0.25, criterion="l2", samples=32)
    assert obspa.report["hessian"]["source"] == "synthetic"
    assert any(not np.array_equal(np.argsort(obspa.scores[g]), np.argsort(l2.scores[g])) for g in obspa.scores)


def test_conv_integer_consumers_get_statistics():
    compiled = compile_model(quantize(builders.residual()))
    assert sorted({n.op for n in consumer_nodes(compiled)}) == ["ConvInteger", "MatMulInteger"]


@pytest.mark.parametrize("build", [lambda: tagger(hidden=8), builders.residual], ids=["lstm-tagger", "cnn"])
def test_compensation_stays_on_the_integer_grid_and_lowers_the_error(build):
    int8 = quantize(build())
    kwargs = dict(ratio=0.25, criterion="obspa", global_ranking=False, samples=32)
    compensated = spa_compiler.prune(int8, **kwargs)
    plain = spa_compiler.prune(int8, compensate=False, **kwargs)
    assert {g: list(a) for g, a in compensated.plan.removed.items()} == \
        {g: list(a) for g, a in plain.plan.removed.items()}
    dense, pruned, uncompensated = (_initializers(m) for m in (int8, compensated.model, plain.model))
    changed = [name for name, values in pruned.items()
               if values.dtype == np.int8 and name in uncompensated and not np.array_equal(values, uncompensated[name])]
    assert changed  # some int8 weights were re-solved...
    for name in changed:
        assert pruned[name].dtype == dense[name].dtype  # ...and stored as int8 with the same scale and zero point
    for name, values in pruned.items():
        if "scale" in name or "zero_point" in name:
            assert name not in dense or values.size != dense[name].size or np.array_equal(values, dense[name])
    assert compensated.report["fidelity"]["rel_error"] < plain.report["fidelity"]["rel_error"]


def test_recurrent_weights_get_the_statistics_of_the_states_they_read(int8_tagger):
    """R reads the hidden states the node outputs as Y: its statistics are Y's second moment (directions
    pooled), recomputed here from Y itself, and a hidden unit's cost then weighs R by them."""
    from onnx import helper

    from spa_compiler.obspa import statistics
    from spa_compiler.obspa.compensate import ObsContext
    from spa_compiler.runtime import session

    compiled = compile_model(int8_tagger)
    lstms = [n for n in compiled.graph.nodes if n.op == "DynamicQuantizeLSTM"]
    stats = statistics.collect(compiled, consumer_nodes(compiled), "synthetic", samples=16, batch=16)
    exposed = int8_tagger.__class__()
    exposed.CopyFrom(int8_tagger)
    exposed.graph.output.extend(helper.make_empty_tensor_value_info(n.outputs[0].name) for n in lstms)
    sess = session(exposed)
    feeds = compiled.spec.samples_per_run(16)[0].feeds(seed=0, noise="auto")
    for node in lstms:
        y = sess.run([node.outputs[0].name], feeds)[0]  # [seq, dirs, batch, hidden]
        rows = y.reshape(-1, y.shape[-1]).astype(np.float64)
        got = stats[statistics.recurrence_key(node.name)]
        assert got.rows == len(rows)
        assert np.allclose(got.h, rows.T @ rows / len(rows), rtol=1e-4, atol=1e-7)
    context = ObsContext(compiled.graph, compiled.analysis, stats)
    recurrences = [entry for group in compiled.analysis.prunable_groups for entry in context.entries(group)
                   if entry.layer.param.input_index == 2 and entry.layer.node.op == "DynamicQuantizeLSTM"]
    assert len(recurrences) == 2 and all(entry.stats is not None for entry in recurrences)


def test_recurrent_bias_takes_the_mean_shift_in_its_input_gate_half():
    from spa_compiler.analysis.rules import rule_for

    compiled = compile_model(quantize(tagger(hidden=8)))
    lstm = next(n for n in compiled.graph.nodes if n.op == "DynamicQuantizeLSTM")
    rule = rule_for(lstm)
    bias = np.asarray(lstm.inputs[rule.bias_input(lstm)].values, dtype=np.float64)  # [2 dirs, 2 * 4 * 8]
    shift = np.arange(2 * 32, dtype=np.float64)
    folded = rule.folded_bias(lstm, bias, shift)
    assert np.array_equal(folded[:, :32] - bias[:, :32], shift.reshape(2, 32))
    assert np.array_equal(folded[:, 32:], bias[:, 32:])
    assert rule.folded_bias(lstm, bias, shift[:10]) is None
