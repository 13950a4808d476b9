"""Normalization: exporter habits that must not confuse analysis or corrupt a rewrite."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from models import builders
from spa_compiler import prune
from spa_compiler.ir import max_runtime_ir_version
from spa_compiler.oracle import oracle_check
from spa_compiler.pipeline import compile_model


def _constants_as_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Move every initializer into a Constant node (PaddlePaddle / spox style)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = [helper.make_node("Constant", [], [init.name], value=init, name=f"const_{init.name}")
             for init in out.graph.initializer]
    del out.graph.initializer[:]
    existing = list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes + existing)
    return out


def test_constant_nodes_become_initializers():
    model = _constants_as_nodes(builders.residual())
    assert len(model.graph.initializer) == 0
    compiled = compile_model(model)
    assert compiled.analysis.prunable_groups
    assert oracle_check(compiled, 0.5).relative_error < 1e-5


def test_old_ir_initializers_listed_as_inputs():
    model = builders.se_block()
    for init in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    compiled = compile_model(model)
    assert [t.name for t in compiled.graph.inputs] == ["x"]
    assert oracle_check(compiled, 0.5).relative_error < 1e-5


def _shared_weight_model() -> onnx.ModelProto:
    """Two convs in different groups read one weight tensor, once directly and once through Identity."""
    net = builders.Net("shared", in_ch=4)
    a = net.act(net.conv("x", 4, bias=False))
    b = net.act(net.conv(a, 4, bias=False))
    conv_a, conv_b = net.nodes[0], net.nodes[2]
    w_b = conv_b.input[1]
    net.nodes.insert(0, helper.make_node("Identity", [conv_a.input[1]], ["w_alias"], name="alias"))
    conv_b.input[1] = "w_alias"  # conv b now reads conv a's weight through Identity
    net.inits = [i for i in net.inits if i.name != w_b]
    c = net.act(net.conv(b, 6))
    return net.model(builders._head(net, c))


def test_shared_initializers_are_unshared_before_slicing():
    model = _shared_weight_model()
    compiled = compile_model(model)
    assert "unshare_initializers" in " ".join(compiled.notes)
    assert len(compiled.analysis.prunable_groups) >= 2
    assert oracle_check(compiled, 0.5).relative_error < 1e-5


def test_output_ir_version_loads_in_the_installed_runtime():
    model = builders.residual()
    model.ir_version = onnx.IR_VERSION  # as onnx's helpers write by default
    result = prune(model, ratio=0.5)
    assert result.model.ir_version <= max_runtime_ir_version()


def test_old_opset_is_upgraded():
    net = builders.Net("old", opset=9)
    x = net.act(net.bn(net.conv("x", 8)))
    y = net.act(net.conv(x, 8))
    model = net.model(builders._head(net, y))
    model.ir_version = 4
    compiled = compile_model(model)
    assert compiled.meta.opset >= 11
    assert oracle_check(compiled, 0.5).relative_error < 1e-5


def test_input_model_is_not_modified():
    model = builders.residual()
    before = model.SerializeToString()
    prune(model, ratio=0.5)
    assert model.SerializeToString() == before


def test_slicing_keeps_dtype_and_values():
    model = builders.flatten_gemm()
    result = prune(model, ratio=0.5, criterion="l1")
    weights = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    assert all(w.dtype in (np.float32, np.int64) for w in weights.values())


def test_folding_keeps_scalar_ranks():
    """A Cast of a 0-d constant must stay 0-d (a 1-d result breaks Concats of shape pieces downstream)."""
    from onnx import TensorProto

    nodes = [helper.make_node("Cast", ["two"], ["two_f"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["two_f", "zero"], ["two_1d"]),
             helper.make_node("Concat", ["two_1d", "one_1d"], ["pair"], axis=0),
             helper.make_node("Mul", ["x", "pair"], ["y"])]
    graph = helper.make_graph(nodes, "scalars", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                              [numpy_helper.from_array(np.array(2, np.int64), "two"),
                               numpy_helper.from_array(np.array([0], np.int64), "zero"),
                               numpy_helper.from_array(np.array([1.0], np.float32), "one_1d")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = compile_model(model)
    from spa_compiler.runtime import session

    out = session(compiled.to_model()).run(None, {"x": np.ones(2, np.float32)})[0]
    np.testing.assert_allclose(out, [2.0, 1.0])
