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
