"""Statistics sources for OBSPA: closed-form moments, 1/f² noise, every source's H, and the flags that pick them."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import spa_compiler
from models import builders
from spa_compiler.obspa import statistics
from spa_compiler.cli import main
from spa_compiler.obspa.moments import relu_moments
from spa_compiler.inputspec import for_model
from spa_compiler.inputvalues import pink_images
from spa_compiler.obspa.obs import damped_inverse
from spa_compiler.pipeline import compile_model, consumer_nodes
from spa_compiler.progress import Progress, for_terminal, step

TRAINED = Path(__file__).resolve().parent.parent / "models" / "trained"


def _bn_mlp(seed: int = 0, width: int = 6, hidden: int = 5) -> onnx.ModelProto:
    """x -> Gemm -> BatchNorm -> Relu -> Gemm: the pattern whose moments have a closed form."""
    rng = np.random.default_rng(seed)
    values = {"w1": rng.normal(size=(hidden, width)), "b1": rng.normal(size=hidden),
              "gamma": rng.uniform(0.5, 2.0, hidden), "beta": rng.normal(size=hidden),
              "rmean": rng.normal(size=hidden), "rvar": rng.uniform(0.5, 2.0, hidden),
              "w2": rng.normal(size=(3, hidden)), "b2": np.zeros(3)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in values.items()]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
             helper.make_node("BatchNormalization", ["h", "gamma", "beta", "rmean", "rvar"], ["n"], name="bn"),
             helper.make_node("Relu", ["n"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1, name="fc2")]
    graph = helper.make_graph(nodes, "bn_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _stats(model, source: str, samples: int = 64, **kw):
    compiled = compile_model(model)
    return statistics.collect(compiled, consumer_nodes(compiled), source, samples=samples, **kw)


def test_relu_moments_match_monte_carlo():
    rng = np.random.default_rng(0)
    mean, var = np.array([-1.5, 0.0, 0.7, 2.0]), np.array([0.3, 1.0, 2.5, 0.5])
    x = np.maximum(rng.normal(mean, np.sqrt(var), size=(400_000, 4)), 0.0)
    m, v, gate = relu_moments(mean, var)
    np.testing.assert_allclose(m, x.mean(0), atol=5e-3)
    np.testing.assert_allclose(v, x.var(0), rtol=2e-2, atol=2e-3)
    np.testing.assert_allclose(gate, (x > 0).mean(0), atol=5e-3)


@pytest.mark.parametrize("source", ["bn", "weights"])
def test_closed_form_moments_match_batch_statistics_of_bn_relu_on_noise(source):
    """bnstat samples what bn/weights compute: N(beta, gamma^2) per channel through ReLU (mean and variances)."""
    model = _bn_mlp()
    sampled = _stats(model, "bnstat", samples=20_000, batch=4096)["fc2"]
    closed = _stats(model, source)["fc2"]
    assert closed.h.shape == sampled.h.shape == (5, 5)
    np.testing.assert_allclose(closed.mean, sampled.mean, rtol=0.03, atol=0.02)
    np.testing.assert_allclose(np.diag(closed.h), np.diag(sampled.h), rtol=0.05, atol=0.02)
    off = ~np.eye(5, dtype=bool)
    if source == "weights":  # cross-channel terms from W1 W1^T (first order through the ReLU)
        assert np.corrcoef(closed.h[off], sampled.h[off])[0, 1] > 0.95
    else:  # independent channels: off-diagonal is the product of means
        np.testing.assert_allclose(closed.h[off], np.outer(closed.mean, closed.mean)[off], atol=1e-12)


@pytest.mark.parametrize("source", ["bnstat", "bn", "weights", "synthetic", "calib"])
def test_each_source_gives_a_positive_definite_h_of_the_consumer_size(source):
    model = builders.residual()
    compiled = compile_model(model)
    consumers = consumer_nodes(compiled)
    calib = {"x": np.random.default_rng(1).normal(size=(32, *[d.dim_value for d in
                                                                model.graph.input[0].type.tensor_type.shape.dim[1:]]))
             .astype(np.float32)} if source == "calib" else None
    stats = statistics.collect(compiled, consumers, source, calib, samples=32)
    assert set(stats) == {n.name for n in consumers}
    for node in consumers:
        h = stats[node.name].h
        w = np.asarray(node.inputs[1].values)
        features = int(np.prod(w.shape[1:])) if node.op == "Conv" else w.shape[1 if node.attrs.get("transB") else 0]
        assert h.shape == (features, features)
        np.testing.assert_allclose(h, h.T, atol=1e-9)
        assert np.linalg.eigvalsh(h).min() >= -1e-8 * np.trace(h)
        hinv = damped_inverse(h, 0.01)
        assert np.all(np.isfinite(hinv)) and np.linalg.eigvalsh(hinv).min() > 0


def test_pink_noise_is_standardized_and_smooth():
    x = pink_images((8, 2, 32, 32), np.random.default_rng(0))
    np.testing.assert_allclose(x.mean(axis=(2, 3)), 0.0, atol=1e-9)
    np.testing.assert_allclose(x.std(axis=(2, 3)), 1.0, atol=1e-6)
    neighbour = np.mean(x[..., 1:] * x[..., :-1])  # natural-image-like: neighbours strongly correlated
    assert neighbour > 0.5
    white = np.random.default_rng(0).normal(size=(8, 2, 32, 32))
    assert abs(np.mean(white[..., 1:] * white[..., :-1])) < 0.05


def test_noise_auto_shapes_only_image_inputs():
    image = for_model(builders.residual())
    auto, white = image.feeds(0, 4, "auto"), image.feeds(0, 4, "white")
    assert not np.allclose(auto["x"], white["x"])
    table = for_model(_bn_mlp())
    np.testing.assert_array_equal(table.feeds(0, 4, "auto")["x"], table.feeds(0, 4, "white")["x"])


def test_progress_bar_draws_only_when_enabled():
    stream = io.StringIO()
    bar = Progress(bar=True, stream=stream)
    for i in range(1, 4):
        step(bar, i, 3, "work")
    bar("done")
    text = stream.getvalue()
    assert "work [" in text and "3/3" in text and "[spac] done" in text
    quiet = io.StringIO()
    step(Progress(bar=False, stream=quiet), 1, 3, "work")
    step(lambda _msg: None, 1, 3, "work")  # plain callables are left alone
    step(None, 1, 3, "work")
    assert quiet.getvalue() == ""
    assert for_terminal(None, quiet=False, stream=io.StringIO()).bar is False  # not a TTY
    assert for_terminal(True, quiet=True, stream=io.StringIO()).bar is False  # --json wins


def test_obspa_ranks_globally_by_default_and_meets_a_macs_target():
    model = builders.residual()
    unmeasured = spa_compiler.prune(model, criterion="obspa", target_macs=0.5, hessian="bn", verify=False)
    assert unmeasured.report["global"] is True and unmeasured.report["ranking"] is None
    result = spa_compiler.prune(model, criterion="obspa", target_macs=0.5, hessian="bn")
    chosen = result.report["ranking"]["chosen"]  # measured: global unless another plan is clearly better
    assert result.report["global"] is (chosen == "global")
    assert result.report["macs"]["after"] <= 0.5 * result.report["macs"]["before"]
    assert spa_compiler.prune(model, criterion="obspa", ratio=0.3, global_ranking=False).report["global"] is False
    assert spa_compiler.prune(model, criterion="l2", ratio=0.3).report["global"] is False


def test_global_obspa_respects_the_group_cap():
    model = builders.residual()
    result = spa_compiler.prune(model, criterion="obspa", ratio=0.6, max_group_ratio=0.5, hessian="bn")
    groups = result.compiled.analysis.groups
    assert result.plan.removed
    for gid, removed in result.plan.removed.items():
        assert len(removed) <= 0.5 * groups[gid].n_atoms


def test_cli_hessian_noise_and_ranking_flags(tmp_path):
    model = str(TRAINED / "tabular_mlp.onnx")
    runner = CliRunner()
    for args, source, noise, is_global in ((["--hessian", "weights"], "weights", "auto", True),
                                           (["--hessian", "bn", "--local"], "bn", "auto", False),
                                           (["--noise", "white", "--no-progress"], "bnstat", "white", True)):
        result = runner.invoke(main, ["prune", model, "-o", str(tmp_path / "o.onnx"), "--criterion", "obspa",
                                      "--ratio", "0.3", "--json", *args])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        assert (report["hessian"]["source"], report["hessian"]["noise"], report["global"]) == (source, noise, is_global)
    bad = runner.invoke(main, ["prune", model, "--criterion", "obspa", "--hessian", "nope"])
    assert bad.exit_code == 2 and "nope" in bad.output
    with pytest.raises(spa_compiler.errors.UsageError):
        spa_compiler.prune(model, criterion="obspa", noise="pink")


def test_cli_progress_bar_on_request(tmp_path):
    result = CliRunner().invoke(main, ["prune", str(TRAINED / "tabular_mlp.onnx"), "-o", str(tmp_path / "o.onnx"),
                                       "--criterion", "obspa", "--progress"])
    assert result.exit_code == 0, result.output
    assert "statistics (bnstat) [" in result.output and "scoring (obspa) [" in result.output
    quiet = CliRunner().invoke(main, ["prune", str(TRAINED / "tabular_mlp.onnx"), "-o", str(tmp_path / "o.onnx"),
                                      "--criterion", "obspa", "--no-progress", "--force"])
    assert quiet.exit_code == 0 and " [#" not in quiet.output
