"""Measured allocation across layers (spa_compiler.ranking): the plan whose outputs move least at the budget."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import spa_compiler
from models.builders import Net
from spa_compiler import fidelity
from spa_compiler.budget import PROBE_SAMPLES, PROBE_VALUES, TARGET_PROBE_RATIOS, MaxErrorSearch, probe_batch_count
from spa_compiler.pipeline import compile_model, plan_pruning, score_groups
from spa_compiler.plan import PlanOptions
from spa_compiler.ranking import clearly_better


def _one_sensitive_branch() -> onnx.ModelProto:
    """Two parallel branches of equal cost added together: branch A's conv pair is scaled up 30x, branch B's
    down 30x, so A's channels carry the output and B's barely reach it.  Per-layer costs (a weight norm, OBSPA's
    cost normalized by its consumer's output energy) see two alike branches; only measuring the outputs tells
    them apart."""
    net = Net("one_sensitive_branch", in_ch=4, hw=8)
    ends = []
    for _ in range(2):
        ends.append(net.conv(net.act(net.conv("x", 12)), 8))
    model = net.model([net.gemm(net.flatten(net.gap(net.act(net.binary("Add", *ends)))), 5)])
    weights = {t.name: t for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for conv, scale in ((convs[1], 30.0), (convs[3], 1 / 30)):  # the second conv of each branch
        for name in conv.input[1:]:
            weights[name].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weights[name]) * np.float32(scale),
                                                           name))
    return model


def test_sensitivity_plan_meets_the_macs_target_and_spares_the_sensitive_layer():
    model = _one_sensitive_branch()
    compiled = compile_model(model)
    scores = score_groups(compiled, "l2")
    options = PlanOptions(ratio=0.5)
    measurement = fidelity.measure_dense(model)
    search = MaxErrorSearch(compiled, scores, options, measurement, 1.0, 0.7, probe_ratios=TARGET_PROBE_RATIOS)
    plan = search.meet_target()
    assert plan is not None and search.macs_fraction(plan) <= 0.7
    uniform = plan_pruning(compiled, scores, options, 0.7)
    sizes = {gid: len(removed) for gid, removed in plan.removed.items()}
    assert search.error(plan) < 0.5 * search.error(uniform)
    assert max(sizes.values()) > 2 * min(sizes.get(gid, 0) for gid in uniform.removed)  # unequal, by measurement


def test_default_obspa_keeps_the_plan_that_measures_best():
    """No --global/--local: the driver measures global, per-group and sensitivity plans and keeps the best."""
    model = _one_sensitive_branch()
    chosen = spa_compiler.prune(model, criterion="obspa", target_macs=0.7)
    ranking = chosen.report["ranking"]
    assert set(ranking["errors"]) == {"global", "local", "sensitivity"}
    assert ranking["chosen"] == "sensitivity"
    assert ranking["errors"]["sensitivity"] < 0.8 * ranking["errors"]["global"]
    forced_global = spa_compiler.prune(model, criterion="obspa", target_macs=0.7, global_ranking=True)
    assert forced_global.report["ranking"] is None
    assert chosen.report["fidelity"]["rel_error"] < forced_global.report["fidelity"]["rel_error"]
    assert chosen.report["macs"]["after"] <= 0.7 * chosen.report["macs"]["before"]
    assert np.isfinite(chosen.report["fidelity"]["rel_error"])


def test_plans_compare_at_the_macs_target_when_the_global_plan_lands_under_it():
    """Digits ViT at r = 0.3: the global plan kept MACs 0.672 for a target of 0.732 and measured 0.201; the
    sensitivity plan at the target measured 0.138 and must be taken (test accuracy 0.950 -> 0.965)."""
    errors, macs = {"global": 0.201, "local": 0.319, "sensitivity": 0.138}, {"global": 0.672, "local": 0.732,
                                                                            "sensitivity": 0.732}
    assert clearly_better(errors, macs, errors["global"], macs["global"], 0.732) == "sensitivity"
    assert clearly_better(errors, macs, errors["global"], macs["global"], None) is None  # no target: no more MACs
    assert clearly_better(errors, {**macs, "sensitivity": 0.75}, errors["global"], macs["global"], 0.732) is None
    assert clearly_better({**errors, "sensitivity": 0.19}, macs, errors["global"], macs["global"], 0.732) is None


def test_probes_see_enough_output_values():
    """A probe's relative error is a ratio of norms over the values it sees: 8 samples of one number each
    (a window tagger's sigmoid) are not enough, so probes take more measurement batches until they see
    PROBE_VALUES values; a model with more outputs per sample keeps PROBE_SAMPLES samples."""
    def batches(n, samples):
        return [{"x": np.zeros((samples, 3), np.float32)} for _ in range(n)]

    def reference(n, samples, values):
        return fidelity.Reference(["y"], [[np.zeros((samples, values), np.float32)] for _ in range(n)])

    assert probe_batch_count(batches(2, 8), reference(2, 8, 1)) == 2       # 8 values per batch: both batches
    assert probe_batch_count(batches(4, 8), reference(4, 8, 1)) == PROBE_VALUES // 8
    assert probe_batch_count(batches(2, 8), reference(2, 8, 5)) == 1       # 40 values: the first batch
    assert probe_batch_count(batches(16, 1), reference(16, 1, 16)) == PROBE_SAMPLES  # a fixed batch of 1
    assert probe_batch_count(batches(1, 8), reference(1, 8, 1)) == 1       # never more than there are

    net = Net("one_score", in_ch=4, hw=8)
    model = net.model([net.gemm(net.flatten(net.gap(net.act(net.conv(net.act(net.conv("x", 12)), 8)))), 1)])
    compiled = compile_model(model)
    scores = score_groups(compiled, "l2")
    measurement = fidelity.measure_dense(model)
    assert len(measurement.inputs.batches) == 2
    search = MaxErrorSearch(compiled, scores, PlanOptions(ratio=0.5), measurement, 1.0, 0.7,
                            probe_ratios=TARGET_PROBE_RATIOS)
    assert search.probe_batches == 2
    plan = search.plan_for({search.groups[0].id: 0.5})
    assert search.error(plan, probe=True) == pytest.approx(search.error(plan), rel=1e-5)  # every sample
