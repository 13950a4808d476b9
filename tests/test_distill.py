"""The ``distill`` Hessian source (spa_compiler.torch.distill) and calibration inputs on fixed-batch graphs.

The torch tests skip without torch (the CI install has none); the fixed-batch and refusal tests do not.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import spa_compiler
from spa_compiler.errors import UsageError
from spa_compiler.obspa import statistics
from spa_compiler.obspa.recalibrate import recalibrate_batchnorm
from spa_compiler.pipeline import compile_model, consumer_nodes


def _fixed_batch_mlp(batch: int = 1, width: int = 6, hidden: int = 5) -> onnx.ModelProto:
    """x[batch, width] -> Gemm -> BatchNorm -> Relu -> Gemm, the batch dimension fixed (as torch.prune exports)."""
    rng = np.random.default_rng(0)
    values = {"w1": rng.normal(size=(hidden, width)), "b1": rng.normal(size=hidden),
              "gamma": np.ones(hidden), "beta": np.zeros(hidden), "rmean": np.zeros(hidden),
              "rvar": np.ones(hidden), "w2": rng.normal(size=(3, hidden)), "b2": np.zeros(3)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in values.items()]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
             helper.make_node("BatchNormalization", ["h", "gamma", "beta", "rmean", "rvar"], ["n"], name="bn"),
             helper.make_node("Relu", ["n"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1, name="fc2")]
    graph = helper.make_graph(nodes, "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_calibration_inputs_run_on_a_fixed_batch_graph():
    """Calibration statistics and BN re-calibration on a batch-1 graph: one run per sample, every sample counted."""
    model = _fixed_batch_mlp()
    x = np.random.default_rng(1).normal(size=(40, 6)).astype(np.float32)
    compiled = compile_model(model)
    stats = statistics.collect(compiled, consumer_nodes(compiled), "calib", {"x": x})
    w1, b1 = (numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == n)) for n in ("w1", "b1"))
    hidden = (x @ w1.T + b1).astype(np.float64)
    r = np.maximum(hidden / np.sqrt(1 + 1e-5), 0.0)  # fc2's input: BN (identity statistics) then Relu
    assert stats["fc2"].rows == len(x)
    np.testing.assert_allclose(stats["fc2"].h, r.T @ r / len(x), rtol=1e-4, atol=1e-5)
    recalibrated = recalibrate_batchnorm(model, {"x": x})
    rmean = numpy_helper.to_array(next(i for i in recalibrated.graph.initializer if i.name == "rmean"))
    np.testing.assert_allclose(rmean, hidden.mean(0), rtol=1e-4, atol=1e-5)


def test_distill_outside_torch_is_a_clear_error():
    with pytest.raises(UsageError, match="spa_compiler.torch.prune"):
        spa_compiler.prune(_fixed_batch_mlp(), criterion="obspa", hessian="distill")


class _Bn:
    """A small Conv-BN-ReLU classifier whose BatchNorms hold the statistics of data far from N(0, 1) noise."""

    @staticmethod
    def build():
        import torch
        from torch import nn

        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                              nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4))
        for bn in (model[1], model[4]):
            bn.momentum = None  # running statistics: the plain average over the "data" batches below
        data = torch.randn(256, 2, 8, 8) * torch.tensor([2.0, 0.5]).view(1, 2, 1, 1) + torch.tensor([1.5, -1.0]).view(
            1, 2, 1, 1)
        model.train()
        with torch.no_grad():
            for batch in data.split(64):
                model(batch)
        return model.eval()


def _batch_stats(model, x):
    """Per-channel batch mean and variance of each BatchNorm's input on *x*."""
    import torch

    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append((m, a[0]))) for m in model
             if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return [(bn, t.mean((0, 2, 3)), t.var((0, 2, 3), unbiased=False)) for bn, t in seen]


def test_distilled_inputs_put_every_batchnorm_on_its_running_statistics():
    torch = pytest.importorskip("torch")
    from spa_compiler.torch.distill import distill_inputs

    model = _Bn.build()
    example = (torch.zeros(1, 2, 8, 8),)
    distilled = distill_inputs(model, example, samples=64, seed=0)
    assert distilled.inputs[0].shape == (64, 2, 8, 8) and distilled.bn_layers == 2 and distilled.class_outputs
    assert distilled.loss_after < 0.5 * distilled.loss_before
    noise = torch.randn(64, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    for (bn, mean, var), (_, mean0, _) in zip(_batch_stats(model, torch.from_numpy(distilled.inputs[0])),
                                              _batch_stats(model, noise)):
        off = float(torch.linalg.norm(mean - bn.running_mean))
        assert off < 0.15 * float(torch.linalg.norm(mean0 - bn.running_mean)) + 0.05
        np.testing.assert_allclose(var.numpy(), bn.running_var.numpy(), rtol=0.25, atol=0.05)
    assert not any(p.grad is not None for p in model.parameters())  # the module itself is left untouched


def test_distilled_inputs_make_class_scores_confident_without_batchnorm():
    torch = pytest.importorskip("torch")
    from spa_compiler.torch.distill import distill_inputs

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5)).eval()
    distilled = distill_inputs(model, (torch.zeros(1, 6),), samples=40, seed=3)
    assert distilled.bn_layers == 0 and distilled.loss_after < 0.5 * distilled.loss_before
    with torch.no_grad():
        probs = model(torch.from_numpy(distilled.inputs[0])).softmax(1)
        noise = model(torch.randn(40, 6, generator=torch.Generator().manual_seed(3))).softmax(1)
    assert float(probs.max(1).values.mean()) > float(noise.max(1).values.mean()) + 0.2
    assert len(set(probs.argmax(1).tolist())) >= 4  # random targets: spread over the classes


def test_distill_refuses_what_it_cannot_match():
    torch = pytest.importorskip("torch")
    from spa_compiler.torch.distill import distill_inputs

    with pytest.raises(UsageError, match="neither"):
        distill_inputs(torch.nn.Linear(4, 1), (torch.zeros(1, 4),), samples=4)
    with pytest.raises(UsageError, match="float"):
        distill_inputs(torch.nn.Embedding(10, 4), (torch.zeros(1, 3, dtype=torch.long),), samples=4)


def test_obspa_with_distilled_statistics_prunes_the_module():
    torch = pytest.importorskip("torch")
    import spa_compiler.torch as spt

    model = _Bn.build()
    x = torch.randn(8, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    result = spt.prune(model, x, criterion="obspa", ratio=0.5, hessian="distill", samples=32)
    hessian = result.report["hessian"]
    assert hessian["source"] == "distill" and hessian["distill"]["samples"] == 32
    assert hessian["distill"]["loss_after"] < hessian["distill"]["loss_before"]
    assert result.report["torch"]["module_vs_onnx_error"] < 1e-4
    assert model[0].out_channels < 8 and model.training is False
    with pytest.raises(UsageError, match="not both"):
        spt.prune(_Bn.build(), x, criterion="obspa", hessian="distill", calib={"input_0": x.numpy()})
