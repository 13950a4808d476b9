"""Reliability: hostile files get one-line errors and no output; runs are deterministic."""
from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from models import builders
from spa_compiler.cli import main


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _assert_refused(folder, model, needle):
    path = folder / "m.onnx"
    path.write_bytes(model.SerializeToString())
    out = folder / "out.onnx"
    result = _run("prune", path, "-o", out)
    _one_line_failure(result, out)
    assert needle in result.output


def _one_line_failure(result, out):
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("[spac]")]
    assert result.exit_code in (1, 2, 3), result.output
    assert len(lines) == 1 and lines[0].startswith("spac: error:"), result.output
    assert "Traceback" not in result.output
    assert not os.path.exists(out)


@pytest.mark.parametrize("seed", range(12))
def test_mutated_protobuf_never_tracebacks(tmp_path, demo_path, seed):
    """Random byte flips and truncations of a real model: success or one clean error, nothing half-written."""
    rng = np.random.default_rng(seed)
    data = bytearray(demo_path.read_bytes())
    if seed % 3 == 0:
        data = data[: int(rng.integers(10, len(data)))]
    else:
        for pos in rng.integers(0, min(len(data), 4000), size=int(rng.integers(1, 8))):  # the graph lives up front
            data[pos] = int(rng.integers(0, 256))
    path = tmp_path / "mutated.onnx"
    path.write_bytes(bytes(data))
    out = tmp_path / "out.onnx"
    result = _run("prune", path, "-o", out)
    if result.exit_code == 0:
        onnx.checker.check_model(onnx.load(str(out)))
    else:
        _one_line_failure(result, out)


def test_external_data_outside_the_model_folder_is_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(64, np.float32).tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    model = builders.residual()
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    del weight.float_data[:]
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", str(4 * 64))):
        weight.external_data.append(onnx.StringStringEntryProto(key=key, value=value))
    _assert_refused(folder, model, "outside the model's folder")


def test_duplicate_tensor_names_are_refused(tmp_path):
    model = builders.residual()
    model.graph.node[1].output[0] = model.graph.node[0].output[0]
    _assert_refused(tmp_path, model, "produced twice")


def test_same_input_and_options_give_identical_bytes(tmp_path, demo_path):
    outs = []
    for k in range(2):
        out = tmp_path / f"out{k}.onnx"
        assert _run("prune", demo_path, "-o", out, "--criterion", "obspa", "--seed", "3").exit_code == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_input_file_is_never_modified(tmp_path, demo_path):
    path = tmp_path / "m.onnx"
    shutil.copy(demo_path, path)
    before = path.read_bytes()
    assert _run("prune", path, "-o", tmp_path / "out.onnx").exit_code == 0
    assert path.read_bytes() == before


def _conv_chain(middle: str = "Relu", middle_inputs=("a",), input_shape=(1, 3, 8, 8), extra_nodes=(),
                extra_inits=(), output="y") -> onnx.ModelProto:
    """x -> Conv -> <middle> -> Conv -> y, with whatever a hostile variant adds."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"), *extra_inits]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node(middle, list(middle_inputs), ["b"], name="mid"),
             helper.make_node("Conv", ["b", "w2"], ["y"], name="c2"), *extra_nodes]
    graph = helper.make_graph(nodes, "hostile", [helper.make_tensor_value_info("x", TensorProto.FLOAT, input_shape)],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _lying_weight(dims) -> onnx.ModelProto:
    model = _conv_chain()
    del model.graph.initializer[0].dims[:]
    model.graph.initializer[0].dims.extend(dims)
    return model


HOSTILE = {
    "cycle": (lambda: _conv_chain("Add", ("a", "y")), "cycle (through node mid (Add))"),
    "self_loop": (lambda: _conv_chain("Add", ("a", "b")), "cycle (through node mid (Add))"),
    "dangling": (lambda: _conv_chain("Add", ("a", "ghost")), "reads tensor 'ghost', which no node"),
    "huge_input": (lambda: _conv_chain(input_shape=(1, 3, 300000, 300000)), "graph input x declares"),
    "huge_constant": (lambda: _conv_chain(
        extra_nodes=[helper.make_node("ConstantOfShape", ["big"], ["z"], name="cos"),
                     helper.make_node("ReduceSum", ["z"], ["zs"], name="rs", keepdims=0),
                     helper.make_node("Add", ["y", "zs"], ["y2"], name="add")],
        extra_inits=[numpy_helper.from_array(np.array([64, 1024, 1024, 1024], np.int64), "big")], output="y2"),
        "node cos (ConstantOfShape) asks for 68719476736 elements"),
    "dims_disagree_with_data": (lambda: _lying_weight([8000000, 3, 3, 3]), "initializer w1 holds 864 bytes"),
    "negative_dims": (lambda: _lying_weight([-8, 3, 3, 3]), "negative dims"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_graphs_are_refused_before_allocating(tmp_path, case):
    build, needle = HOSTILE[case]
    _assert_refused(tmp_path, build(), needle)
