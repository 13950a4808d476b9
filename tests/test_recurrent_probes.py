"""Sensitivity probes of the groups an int8 recurrence reads are compensated (spa_compiler/obspa/recurrence.py).

The measured allocation probes each group alone with plain removal; a recurrence carries what a removal
changes through every later step, and OBSPA's compensation of its ``W`` and ``R`` is what keeps that small,
so the groups a compensated recurrent layer reads are probed as the plan will write them.
"""
from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime.quantization")

from models.sequence import quantize, tagger  # noqa: E402
from spa_compiler import fidelity  # noqa: E402
from spa_compiler.analysis import CONSUMER  # noqa: E402
from spa_compiler.api import _statistics  # noqa: E402
from spa_compiler.budget import TARGET_PROBE_RATIOS, MaxErrorSearch  # noqa: E402
from spa_compiler.obspa.compensate import compensate  # noqa: E402
from spa_compiler.obspa.recurrence import compensated_recurrent_groups  # noqa: E402
from spa_compiler.pipeline import compile_model, score_groups  # noqa: E402
from spa_compiler.plan import PlanOptions  # noqa: E402


@pytest.fixture(scope="module")
def int8_tagger():
    model = quantize(tagger(hidden=8, head=12))
    compiled = compile_model(model)
    obs, _, _ = _statistics(compiled, None, None, 32, 0, 0.01, "auto", lambda _m: None)
    scores = score_groups(compiled, "obspa", obs=obs)
    measurement = fidelity.measure_dense(model, spec=compiled.spec)
    return compiled, obs, scores, measurement


def _readers(compiled, gid) -> set[str]:
    return {p.op for p in compiled.analysis.groups[gid].params_by_role(CONSUMER)}


def test_the_groups_an_int8_recurrence_reads_and_no_other(int8_tagger):
    compiled = int8_tagger[0]
    recurrent = compensated_recurrent_groups(compiled.graph, compiled.analysis)
    prunable = {g.id for g in compiled.analysis.prunable_groups}
    expected = {gid for gid in prunable if "DynamicQuantizeLSTM" in _readers(compiled, gid)}
    assert recurrent == expected and len(expected) == 3  # embedding, both LSTMs' hidden units
    assert prunable - recurrent  # the head's hidden layer: read by MatMulInteger only
    floats = compile_model(tagger(hidden=8, head=12))  # float LSTMs: OBSPA does not compensate them
    assert compensated_recurrent_groups(floats.graph, floats.analysis) == frozenset()


def test_recurrent_probes_measure_the_compensated_removal_and_the_others_plain(int8_tagger):
    compiled, obs, scores, measurement = int8_tagger
    recurrent = compensated_recurrent_groups(compiled.graph, compiled.analysis)
    options = PlanOptions(ratio=0.25)

    def judge(**kwargs):
        return MaxErrorSearch(compiled, scores, options, measurement, float("inf"), None,
                              lambda plan: compensate(obs, plan), probe_ratios=TARGET_PROBE_RATIOS, **kwargs)

    aware, plain, compensated = (judge(compensate_probes=False, compensated_groups=recurrent),
                                 judge(compensate_probes=False), judge(compensate_probes=True))
    for group in compiled.analysis.prunable_groups:
        plan = aware.plan_for({group.id: 0.25})
        got = aware.error(plan, probe=True)
        if group.id in recurrent:
            assert got == pytest.approx(compensated.error(plan, probe=True), rel=1e-9)
            assert got < plain.error(plan, probe=True)  # compensation repairs what plain removal leaves
        else:
            assert got == pytest.approx(plain.error(plan, probe=True), rel=1e-9)
            assert got != pytest.approx(compensated.error(plan, probe=True), rel=1e-6)


@pytest.mark.parametrize("hidden, head, target", [(16, 24, 0.7), (8, 12, 0.5)])
def test_recurrence_aware_probes_allocate_a_plan_that_measures_less_error(hidden, head, target):
    """At the same MACs target, the allocation from compensated recurrent probes moves the outputs less (as
    written, compensated) than the one from plain probes, which overprice what compensation repairs."""
    model = quantize(tagger(hidden=hidden, head=head))
    compiled = compile_model(model)
    obs, _, _ = _statistics(compiled, None, None, 32, 0, 0.01, "auto", lambda _m: None)
    scores = score_groups(compiled, "obspa", obs=obs)
    measurement = fidelity.measure_dense(model, spec=compiled.spec)
    errors = []
    for groups in (compensated_recurrent_groups(compiled.graph, compiled.analysis), frozenset()):
        search = MaxErrorSearch(compiled, scores, PlanOptions(ratio=0.25), measurement, 1.0, target,
                                lambda plan: compensate(obs, plan), probe_ratios=TARGET_PROBE_RATIOS,
                                compensate_probes=False, compensated_groups=groups)
        plan = search.meet_target()
        assert plan is not None and search.macs_fraction(plan) <= target + 0.005
        errors.append(search.error(plan))
    aware, plain = errors
    assert aware < 0.9 * plain
