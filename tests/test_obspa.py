"""OBSPA and the statistics-based criteria: exact math, planted channels, calibration inputs, accuracy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import spa_compiler
from models import builders
from spa_compiler.cli import main
from spa_compiler.errors import UsageError
import onnx_graphsurgeon as gs

from spa_compiler.obspa.compensate import LayerEntry
from spa_compiler.obspa.greedy import ConsumerState
from spa_compiler.obspa.obs import ConsumerLayer, KroneckerHessian, compensate_units
from spa_compiler.obspa.statistics import LayerStats
from spa_compiler.runtime import session

TRAINED = Path(__file__).resolve().parent.parent / "models" / "trained"


def _mlp(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray) -> onnx.ModelProto:
    """x -> Gemm(w1, b1) -> Relu -> Gemm(w2) -> y, weights as given (transB=1 layout)."""
    inits = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in
             (("w1", w1), ("b1", b1), ("w2", w2), ("b2", np.zeros(w2.shape[0])))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1, name="fc2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", w1.shape[1]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", w2.shape[0]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_compensation_equals_least_squares_optimum():
    """With calibration inputs and no damping, the kept weights of fc2 solve min ||R W2^T - R_K W^T||."""
    rng = np.random.default_rng(0)
    w1, b1, w2 = rng.normal(size=(12, 6)), rng.normal(size=12), rng.normal(size=(3, 12))
    x = rng.normal(size=(400, 6)).astype(np.float32)
    model = _mlp(w1, b1, w2)
    result = spa_compiler.prune(model, ratio=0.5, criterion="obspa", calib={"x": x}, damping=0.0)
    weights = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    w1_new = next(v for k, v in weights.items() if k.startswith("w1"))
    kept = [int(np.argmin(np.abs(w1 - row).sum(axis=1))) for row in w1_new]
    r = np.maximum(x.astype(np.float64) @ w1.T + b1, 0)
    optimum, *_ = np.linalg.lstsq(r[:, kept], r @ w2.T, rcond=None)
    w2_new = next(v for k, v in weights.items() if k.startswith("w2"))
    assert w2_new.shape == (3, 6)
    np.testing.assert_allclose(w2_new, optimum.T, rtol=1e-3, atol=1e-4)


def _gemm_entry(w: np.ndarray, h: np.ndarray, damping: float) -> LayerEntry:
    layer = ConsumerLayer(gs.Node("Gemm", name="fc"), None, w.shape, w, 1)
    return LayerEntry(layer, LayerStats(h, np.zeros(len(h)), np.zeros(len(h)), 1), damping)


def test_obs_block_update_matches_the_formula():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 8))
    h = x.T @ x / 200
    w = rng.normal(size=(4, 8))
    entry = _gemm_entry(w, h, 0.0)
    cols = np.array([2, 5])
    w1 = compensate_units(w, KroneckerHessian.exact(h), entry.hinv, cols)
    kept = np.setdiff1d(np.arange(8), cols)
    optimum, *_ = np.linalg.lstsq(x[:, kept], x @ w.T, rcond=None)
    np.testing.assert_allclose(w1[:, kept], optimum.T, atol=1e-8)
    np.testing.assert_array_equal(w1[:, cols], 0.0)
    err = np.sum((x @ w.T - x @ w1.T) ** 2) / 200
    state = ConsumerState(entry, [cols])  # one atom of two columns
    assert state.costs(np.array([0]))[0] * state.energy == pytest.approx(0.5 * err, rel=1e-6)


@pytest.mark.parametrize("keep_weights", [True, False])
def test_joint_removal_of_blocks_equals_removing_them_one_by_one(keep_weights):
    """OBSPA removes the atoms of one greedy step with one downdate; that must equal sequential removal,
    whether the greedy keeps a consumer's weights or its Gram matrix."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 12))
    w = rng.normal(size=(5, 12))
    entry = _gemm_entry(w, x.T @ x / 300, 0.01)
    atoms = [np.array([i]) for i in range(12)]

    def state():
        s = ConsumerState(entry, atoms)
        s.w, s.gram = (entry.hessian.split(w).copy(), None) if keep_weights else (None, w.T @ w)
        return s

    seq, joint = state(), state()
    seq.remove(np.array([1, 2, 3]))
    seq.remove(np.array([7, 8, 9]))
    joint.remove(np.array([1, 2, 3, 7, 8, 9]))
    np.testing.assert_allclose(joint.hinv, seq.hinv, atol=1e-10)
    rest = np.array([0, 4, 5, 6, 10, 11])
    np.testing.assert_allclose(joint.costs(rest), seq.costs(rest), rtol=1e-9)
    # and the costs after removal are those of the compensated weights
    w1 = compensate_units(w, entry.hessian, entry.hinv, np.array([1, 2, 3, 7, 8, 9]))
    g1 = w1.T @ w1
    expected = 0.5 * np.diag(g1)[rest] / np.diag(joint.hinv) / joint.energy
    np.testing.assert_allclose(joint.costs(rest), expected, rtol=1e-9)


def test_removing_an_exactly_zero_channel_costs_nothing_and_changes_nothing():
    rng = np.random.default_rng(2)
    w1, b1, w2 = rng.normal(size=(8, 5)), rng.normal(size=8), rng.normal(size=(2, 8))
    w1[3], b1[3] = 0.0, -1.0  # channel 3 is always 0 after the ReLU
    model = _mlp(w1, b1, w2)
    result = spa_compiler.prune(model, ratio=0.125, criterion="obspa", hessian="synthetic")  # one of eight
    (gid, group_scores), = result.scores.items()
    assert int(np.argmin(group_scores)) == 3 and group_scores[3] == pytest.approx(0.0, abs=1e-12)
    assert result.plan.removed[gid].tolist() == [3]
    x = rng.normal(size=(16, 5)).astype(np.float32)
    before = session(model).run(None, {"x": x})[0]
    after = session(result.model).run(None, {"x": x})[0]
    np.testing.assert_allclose(after, before, atol=1e-5)


@pytest.mark.parametrize("criterion,hessian", [(c, None) for c in ("l1", "l2", "bn_scale", "obspa", "activation", "wanda")]
                         + [("obspa", h) for h in ("bnstat", "bn", "weights", "synthetic")])
def test_planted_weak_channel_ranks_last(criterion, hessian):
    """Channel 5 of the first conv is scaled down everywhere (weights, BN gamma): every criterion drops it first.

    (Not obspa with H = I: it sees only the consumer columns, which are left as they are.)
    """
    net = builders.Net("planted", in_ch=3, hw=8, seed=3)
    x = builders._cbr(net, "x", 8)
    model = net.model(builders._head(net, builders._cbr(net, x, 8)))
    inits = {i.name: i for i in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    for node in model.graph.node:
        if node is conv:
            w = numpy_helper.to_array(inits[node.input[1]]).copy()
            w[5] *= 1e-3
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(w, node.input[1]))
        if node.op_type == "BatchNormalization" and node.input[0] == conv.output[0]:
            for index in (1, 2):
                v = numpy_helper.to_array(inits[node.input[index]]).copy()
                v[5] *= 1e-3
                inits[node.input[index]].CopyFrom(numpy_helper.from_array(v, node.input[index]))
    calib = {"x": np.random.default_rng(4).normal(size=(64, 3, 8, 8)).astype(np.float32)}
    result = spa_compiler.prune(model, ratio=0.125, criterion=criterion, calib=calib, compensate=False,
                                hessian=hessian, global_ranking=False)
    first = result.compiled.analysis.groups[min(result.plan.removed)]
    assert conv.name in first.nodes
    assert result.plan.removed[first.id].tolist() == [5]


def test_calib_errors_are_clear(tmp_path):
    model = TRAINED / "tabular_mlp.onnx"
    cases = {
        "missing.npz": None,
        "notnpz.npz": b"not a zip file",
        "wrongkey.npz": {"a": np.zeros((4, 30), np.float32), "b": np.zeros((4, 30), np.float32)},
        "wrongrank.npz": {"x": np.zeros((4, 30, 1), np.float32)},
        "empty.npz": {"x": np.zeros((0, 30), np.float32)},
    }
    for name, content in cases.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, dict):
            np.savez(path, **content)
        out = tmp_path / "out.onnx"
        result = CliRunner().invoke(main, ["prune", str(model), "-o", str(out), "--criterion", "obspa",
                                           "--calib", str(path)])
        assert result.exit_code == 2, (name, result.output)
        assert "spac: error:" in result.output and name in result.output and "Traceback" not in result.output
        assert not out.exists()
    with pytest.raises(UsageError):
        spa_compiler.prune(str(model), recalibrate_bn=True)


def _accuracy(model, name):
    data = np.load(TRAINED / f"{name}_test.npz")
    logits = session(model).run(None, {"x": data["x"]})[0]
    return float((logits.argmax(1) == data["y"]).mean())


def test_obspa_keeps_accuracy_without_data_where_magnitude_collapses():
    """The trained digits CNN (BatchNorm kept): data-free OBSPA vs L2 at 30 %, and OBSPA alone at 50 %."""
    path = str(TRAINED / "digits_cnn.onnx")
    dense = _accuracy(onnx.load(path), "digits_cnn")
    obspa = _accuracy(spa_compiler.prune(path, ratio=0.3, criterion="obspa").model, "digits_cnn")
    l2 = _accuracy(spa_compiler.prune(path, ratio=0.3, criterion="l2").model, "digits_cnn")
    assert dense > 0.99
    assert obspa >= 0.95 * dense, obspa
    assert obspa > l2 + 0.3, (obspa, l2)
    half = _accuracy(spa_compiler.prune(path, ratio=0.5, criterion="obspa").model, "digits_cnn")
    assert half >= 0.8 * dense, half  # the data-free target at 50 % (global ranking, 1/f² noise)


def test_calibration_and_bn_recalibration_keep_accuracy_at_half():
    path = str(TRAINED / "digits_cnn.onnx")
    calib = str(TRAINED / "digits_cnn_calib.npz")
    result = spa_compiler.prune(path, ratio=0.5, criterion="obspa", calib=calib, recalibrate_bn=True)
    assert result.report["hessian"]["source"] == "calib"
    assert _accuracy(result.model, "digits_cnn") >= 0.9
