"""fp16 models: the mask oracle, OBSPA's statistics run, and latency tables timed in fp16 (issue 16).

onnxruntime's CPU provider runs fp16 Conv/MatMul/normalization (casting
where it has no fp16 kernel), so an fp16 model prunes and verifies as its
fp32 original does; these tests hold that on the rule graphs.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from models import builders
from models.fp16 import to_fp16
from spa_compiler import prune
from spa_compiler.latency.layers import timed_layers
from spa_compiler.latency.measure import op_model
from spa_compiler.latency.table import LatencyTable
from spa_compiler.oracle import oracle_check
from spa_compiler.pipeline import compile_model
from spa_compiler.runtime import session
from tests.test_latency import FakeTimer


@pytest.mark.parametrize("name", sorted(builders.RULE_MODELS))
def test_fp16_pruned_equals_masked_original(name):
    compiled = compile_model(to_fp16(builders.RULE_MODELS[name]()))
    assert compiled.analysis.prunable_groups, f"{name}: nothing prunable in fp16"
    result = oracle_check(compiled, ratio=0.5)
    assert result.removed_atoms > 0
    assert result.relative_error < 1e-3, f"{name}: max abs error {result.max_abs_error}"


def _fp16_initializers(model: onnx.ModelProto) -> set[int]:
    return {init.data_type for init in model.graph.initializer if init.data_type in
            (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}


def test_fp16_batch_statistics_graph_computes_in_fp16_like_fp32():
    """OBSPA's bnstat graph (BatchNormalization by batch statistics) keeps the model's dtype."""
    from spa_compiler.ir import to_model
    from spa_compiler.obspa.statistics import batch_stat_graph

    outputs = []
    for model in (builders.demo_cnn(), to_fp16(builders.demo_cnn())):
        compiled = compile_model(model)
        graph = batch_stat_graph(compiled.graph, compiled.meta.opset)
        x = np.random.default_rng(0).standard_normal((4, 3, 32, 32))
        sess = session(to_model(graph, compiled.meta))
        dtype = np.float16 if "float16" in sess.get_inputs()[0].type else np.float32
        outputs.append(sess.run(None, {sess.get_inputs()[0].name: x.astype(dtype)})[0].astype(np.float64))
    full, half = outputs
    assert np.linalg.norm(full - half) < 0.02 * np.linalg.norm(full)


def test_fp16_obspa_writes_fp16_weights():
    """Compensated weights go back in fp16; the pruned model verifies (prune raises otherwise)."""
    half = prune(to_fp16(builders.residual()), criterion="obspa", ratio=0.3, samples=16, hessian="bnstat")
    assert _fp16_initializers(half.model) == {onnx.TensorProto.FLOAT16}
    assert half.plan.n_removed > 0 and half.report["fidelity"]["finite"]


def test_fp16_layers_are_timed_in_fp16():
    compiled = compile_model(to_fp16(builders.demo_cnn()))
    layers = timed_layers(compiled.graph, compiled.analysis, compiled.spec)
    assert layers and {layer.dtype for layer in layers} == {"float16"}
    assert all(layer.signature.endswith(":float16") for layer in layers)
    fp32 = timed_layers(*(lambda c: (c.graph, c.analysis, c.spec))(compile_model(builders.demo_cnn())))
    assert {layer.signature + ":float16" for layer in fp32} == {layer.signature for layer in layers}
    layer = layers[0]
    single = op_model(layer, layer.c_in, layer.c_out)
    assert single.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    dims = [d.dim_value for d in single.graph.input[0].type.tensor_type.shape.dim]
    (y,) = session(single).run(None, {"x": np.ones(dims, np.float16)})
    assert y.dtype == np.float16
    table = LatencyTable(FakeTimer(), None, "cpu")
    table.step(layer.kind, "float16")
    table.step(layer.kind)
    assert set(table.data["steps"]) == {layer.kind, f"{layer.kind}:float16"}, "fp16 probes are their own"
