"""Probe runs from the last cut before the first changed layer compute what the whole masked graph does.

:mod:`spa_compiler.suffix` skips the dense prefix of a probe (issue 12 item 5: most of OBSPA's time on a
ResNet-50 was whole forward passes of one-group probes); the outputs must be the whole run's.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from models.builders import resnet50
from spa_compiler import fidelity
from spa_compiler.budget import TARGET_PROBE_RATIOS, MaxErrorSearch
from spa_compiler.pipeline import compile_model, score_groups
from spa_compiler.plan import PlanOptions


def _model(ids_only: bool):
    """A small ResNet; *ids_only*: its only output the ArgMax of its logits (measured through the score tap)."""
    model = resnet50(hw=64, blocks=(1, 1, 1, 1), width=16, classes=10)
    if ids_only:
        logits = model.graph.output[0].name
        model.graph.node.append(helper.make_node("ArgMax", [logits], ["ids"], axis=-1, keepdims=0))
        del model.graph.output[:]
        model.graph.output.append(helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"]))
    return model


@pytest.fixture(scope="module", params=[False, True], ids=["logits", "ids-only"])
def search(request):
    compiled = compile_model(_model(request.param), run_dense=True, measure=(0, "auto"))
    scores = score_groups(compiled, "l2")
    measurement, _ = fidelity.try_measure_dense(compiled.to_model(), None, 0, "auto", required=True,
                                                spec=compiled.spec, dense=compiled.dense)
    return MaxErrorSearch(compiled, scores, PlanOptions(global_ranking=False), measurement, float("inf"), 0.75,
                          probe_ratios=TARGET_PROBE_RATIOS)


def test_probes_from_the_cut_equal_whole_masked_runs(search):
    runner, reference = search._runner, search.measurement.reference
    batches = search.measurement.inputs.batches
    cuts = []
    for group in search.groups:
        plan = search.plan_for({group.id: 0.5})
        probe = search.error(plan, probe=True)
        keep = len(runner._suffix._recorded[next(iter(runner._suffix._recorded))])
        whole = runner.error(search.compiled.analysis, plan, None,
                             fidelity.Reference(reference.names, reference.outputs[:keep]), batches[:keep])
        assert probe == pytest.approx(whole, rel=1e-5, abs=1e-7) and probe > 0
        changed = {p.tensor for p in search.compiled.analysis.groups[group.id].params}
        cuts.append(runner._suffix.cut_for(sorted(changed)))
    assert runner._cutting
    assert len({c for c in cuts if c}) >= 3  # probes deep in the network start at different cuts


def test_every_cut_boundary_is_produced_before_the_cut(search):
    search.error(search.plan_for({search.groups[-1].id: 0.5}), probe=True)
    suffix = search._runner._suffix
    for position, boundary in suffix.boundaries.items():
        before = {t.name for node in suffix.nodes[:position] for t in node.outputs}
        assert boundary and {t.name for t in boundary} <= before
        assert np.all(np.diff(suffix.cuts) > 0)
