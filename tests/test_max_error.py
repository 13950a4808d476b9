"""--max-error: as much pruning as the measured output error allows, never more."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import spa_compiler
from spa_compiler import fidelity
from spa_compiler.budget import MaxErrorSearch, _upper_hull

ROOT = Path(__file__).resolve().parent.parent
MODELS = [ROOT / "models" / "demo_cnn.onnx", ROOT / "models" / "trained" / "digits_cnn.onnx",
          ROOT / "models" / "trained" / "digits_vit.onnx", ROOT / "models" / "trained" / "tabular_mlp.onnx"]


def _measured(source, pruned, calib=None) -> float:
    """The written model's error, measured afresh from the dense file (not taken from the report)."""
    return fidelity.relative_error(fidelity.measure(pruned, fidelity.measure_dense(str(source), calib)))


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_error_stays_within_the_limit_and_a_larger_limit_prunes_more(path, tmp_path):
    macs = []
    for limit in (0.02, 0.1, 0.4):
        out = tmp_path / f"p{limit}.onnx"
        result = spa_compiler.prune(str(path), max_error=limit, output=str(out))
        assert _measured(path, str(out)) <= limit
        assert result.report["max_error"]["measured"] == pytest.approx(result.report["fidelity"]["rel_error"])
        macs.append(result.report["macs"]["after"])
    assert macs[0] >= macs[1] >= macs[2]
    assert macs[2] < result.report["macs"]["before"]  # 0.4 always allows some pruning on these models


def test_obspa_with_calibration_inputs_stays_within_the_limit(tmp_path):
    path = ROOT / "models" / "trained" / "digits_cnn.onnx"
    calib = {"x": np.load(ROOT / "models" / "trained" / "digits_cnn_calib.npz")["x"][:32]}
    result = spa_compiler.prune(str(path), criterion="obspa", calib=calib, max_error=0.1)
    assert result.report["fidelity"]["inputs"] == "calib (32 samples)"
    data = fidelity.measure_dense(str(path), calib)
    assert fidelity.relative_error(fidelity.measure(result.model, data)) <= 0.1
    assert result.report["macs"]["after"] < 0.9 * result.report["macs"]["before"]


def test_target_macs_is_the_goal_and_the_limit_the_floor():
    path = str(ROOT / "models" / "trained" / "tabular_mlp.onnx")
    loose = spa_compiler.prune(path, target_macs=0.8, max_error=10.0)
    assert loose.report["macs"]["after"] <= 0.8 * loose.report["macs"]["before"]
    plain = spa_compiler.prune(path, target_macs=0.8)
    assert loose.report["macs"]["after"] == plain.report["macs"]["after"]  # the target's own plan, no search
    tight = spa_compiler.prune(path, target_macs=0.3, max_error=0.05)
    assert tight.report["fidelity"]["rel_error"] <= 0.05
    assert tight.report["macs"]["after"] > 0.3 * tight.report["macs"]["before"]


def test_written_model_over_the_limit_backs_off(monkeypatch):
    """If the search's measurements were wrong, the written model's own measurement still holds the limit."""
    monkeypatch.setattr(MaxErrorSearch, "error", lambda self, plan, probe=False: 0.0)  # every plan looks perfect
    path = str(ROOT / "models" / "trained" / "digits_cnn.onnx")
    steps = []
    result = spa_compiler.prune(path, max_error=0.1, progress=steps.append)
    assert any("backing off" in s for s in steps)
    assert result.report["max_error"]["budget"] < result.report["max_error"]["increments"]
    assert result.report["fidelity"]["rel_error"] <= 0.1
    assert _measured(path, result.model) <= 0.1


@pytest.mark.parametrize("compensated", [False, True])
def test_masked_probe_measures_what_the_rewritten_model_computes(compensated):
    """Weights fed as masked inputs (with OBSPA's compensated values) equal the pruned model, on exact groups."""
    from spa_compiler.obspa.compensate import ObsContext, compensate
    from spa_compiler.pipeline import apply_plan, compile_model, score_groups
    from spa_compiler.plan import PlanOptions, make_plan

    path = str(ROOT / "models" / "trained" / "digits_cnn.onnx")
    compiled = compile_model(path)
    scores = score_groups(compiled, "l2")
    options = PlanOptions(ratio=0.3)
    plan = make_plan(compiled.analysis, scores, options)
    updates_for = (lambda p: compensate(ObsContext(compiled.graph, compiled.analysis), p)) \
        if compensated else (lambda p: None)
    measurement = fidelity.measure_dense(path)
    search = MaxErrorSearch(compiled, scores, options, measurement, 0.1, updates_for=updates_for)
    masked = search.error(plan)
    rewritten = fidelity.relative_error(fidelity.measure(apply_plan(compiled, plan, updates_for(plan))[0],
                                                         measurement))
    assert masked == pytest.approx(rewritten, rel=1e-4) and masked > 0.01


def test_max_error_must_be_positive():
    with pytest.raises(spa_compiler.errors.UsageError, match="--max-error"):
        spa_compiler.prune(str(MODELS[0]), max_error=0.0)


def test_upper_hull_keeps_the_efficient_points():
    points = [(0.1, 0.5, 0.25), (0.2, 0.55, 0.5), (0.4, 0.9, 0.75), (0.5, 0.8, 0.9)]
    assert [p[2] for p in _upper_hull(points)] == [0.0, 0.25, 0.75]
    assert [p[2] for p in _upper_hull([(0.0, 0.3, 0.5), (0.0, 0.1, 0.25)])] == [0.0, 0.5]  # free channels first
