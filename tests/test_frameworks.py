"""Exports from every non-torch framework prune, run and pass the mask oracle (no framework installed).

The models are small committed exports (``models/frameworks/<framework>/``,
written by ``models/export_frameworks.py`` from each framework's zoo module):
tf2onnx (Keras), jax2onnx (Flax), paddle2onnx and skl2onnx graphs, weightless
skeletons where their weights would be large.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import spa_compiler
from models.skeleton import load_materialized
from spa_compiler.cost import totals
from spa_compiler.normalize import normalize
from spa_compiler.oracle import oracle_check
from spa_compiler.pipeline import compile_model
from spa_compiler.runtime import random_inputs, session

FRAMEWORKS = Path(__file__).resolve().parent.parent / "models" / "frameworks"
REQUIRED = {
    "sklearn": {"mlp_classifier", "mlp_classifier_nozipmap", "mlp_regressor", "standard_scaler_mlp_classifier",
                "standard_scaler_mlp_regressor", "minmax_scaler_mlp_regressor", "pca_mlp_classifier"},
    "jax": {"mlp", "cnn", "resnet_block", "attention"},
    "keras": {"small_cnn", "mobilenetv2"},
    "paddle": {"lenet", "mobilenet_v2", "shufflenet_v2_x1_0"},
}
CASES = sorted((fw, p.stem) for fw in REQUIRED for p in (FRAMEWORKS / fw).glob("*.onnx"))


def load(framework: str, name: str) -> onnx.ModelProto:
    return load_materialized(str(FRAMEWORKS / framework / f"{name}.onnx"))


def test_every_required_export_is_committed():
    for framework, names in REQUIRED.items():
        assert names <= {p.stem for p in (FRAMEWORKS / framework).glob("*.onnx")}, framework


@pytest.fixture(scope="module", params=CASES, ids=[f"{fw}-{n}" for fw, n in CASES])
def case(request):
    framework, name = request.param
    model = load(framework, name)
    return name, model, compile_model(model)


def test_oracle_on_exact_groups(case):
    name, _, compiled = case
    exact = [g for g in compiled.analysis.prunable_groups if g.exact]
    assert exact, f"{name}: no exact prunable group"
    result = oracle_check(compiled, ratio=0.5, seed=0)
    assert result.groups_pruned == len(exact)
    assert result.relative_error < 1e-4, f"{name}: {result.max_abs_error} vs scale {result.output_scale}"


# Frozen groups beyond the one that reaches the output (or its softmax): the residual stream of the Flax
# transformer block also feeds a LayerNorm that jax2onnx decomposes into ReduceMean over the channels.
EXTRA_FROZEN = {"attention": 1}


def test_only_the_output_group_is_frozen(case):
    # Exporters rename the batch across a flatten (tf2onnx's unk__N, paddle2onnx's DynamicDimension.0);
    # the reshape rule must still see the same dim on both sides, or the last conv's group freezes.
    name, _, compiled = case
    frozen = [g.frozen[0] for g in compiled.analysis.groups if g.frozen]
    assert len(frozen) == 1 + EXTRA_FROZEN.get(name, 0), (name, frozen)


def test_prune_verifies_and_macs_fall(case):
    name, model, _ = case
    result = spa_compiler.prune(model, ratio=0.5)
    assert result.report["verify"]["outputs"] >= 1
    _, dense = totals(normalize(model).graph)
    _, pruned = totals(normalize(result.model).graph)
    assert pruned < 0.8 * dense, f"{name}: MACs {pruned / dense:.2f} of dense"


def test_scaler_lowering_computes_the_same_outputs():
    model = load("sklearn", "standard_scaler_mlp_regressor")
    assert any(n.op_type == "Scaler" for n in model.graph.node)
    lowered = normalize(model).to_model()
    assert not any(n.op_type == "Scaler" for n in lowered.graph.node)
    ref = session(model)
    feeds = random_inputs(ref, batch=4, seed=1)
    np.testing.assert_allclose(session(lowered).run(None, feeds)[0], ref.run(None, feeds)[0], rtol=1e-5, atol=1e-5)


def test_scaler_before_the_mlp_no_longer_freezes_it():
    compiled = compile_model(load("sklearn", "standard_scaler_mlp_classifier"))
    assert len(compiled.analysis.prunable_groups) == 2  # both hidden layers


def test_zipmap_output_survives_pruning():
    model = load("sklearn", "mlp_classifier")
    pruned = spa_compiler.prune(model, ratio=0.5).model
    probabilities = next(o for o in pruned.graph.output if o.name == "output_probability")
    assert probabilities.type.HasField("sequence_type")
    onnx.checker.check_model(pruned)
    sess = session(pruned)
    labels, maps = sess.run(None, random_inputs(sess, batch=3))
    assert labels.shape == (3,) and len(maps) == 3 and set(maps[0]) == {0, 1, 2}


def test_incomplete_symbolic_inference_leaves_no_file_behind(tmp_cwd):
    # ZipMap is unknown to onnxruntime's symbolic inference, which then dumps the model into the cwd.
    compile_model(load("sklearn", "mlp_classifier"))
    assert list(tmp_cwd.iterdir()) == []


def test_an_exporters_leftover_framework_op_is_refused_in_one_line(tmp_path):
    # tf2onnx leaves TensorFlow's StatefulPartitionedCall (with binary attributes) in Keras ConvNeXt.
    from onnx import TensorProto, helper

    from spa_compiler.errors import ModelLoadError

    node = helper.make_node("StatefulPartitionedCall", ["x"], ["y"], name="convnext/call")
    node.attribute.append(helper.make_attribute("f", b"\x82\xff not text"))
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    graph.node[1].input[0] = "r"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelLoadError, match="convnext/call \\(StatefulPartitionedCall\\) is not an ONNX operator"):
        spa_compiler.prune(model)
    for node in graph.node:  # the long spelling of the default domain is the same domain
        node.domain = "ai.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelLoadError, match="StatefulPartitionedCall"):
        spa_compiler.prune(model)
