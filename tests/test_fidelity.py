"""Fidelity on every run: the pruned model measured against the dense one, and a warning when it collapses."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import spa_compiler
from spa_compiler import fidelity
from spa_compiler.cli import main
from spa_compiler.inputspec import for_model
from spa_compiler.oracle import masked_model
from spa_compiler.pipeline import compile_model, score_groups
from spa_compiler.plan import PlanOptions, make_plan
from spa_compiler.runtime import session

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "demo_cnn.onnx"
DIGITS = ROOT / "models" / "trained" / "digits_cnn.onnx"


def _independent_error(dense, pruned, seed=0, samples=16, batch=8):
    """Relative L2 error and top-1 agreement recomputed here, outside the module under test."""
    ref, new = session(dense), session(pruned)
    spec = for_model(dense)
    a, b = [], []
    for start in range(0, samples, batch):
        feeds = spec.feeds(seed=seed + start, batch=batch, noise="auto")
        a.append(ref.run(None, feeds)[0])
        b.append(new.run(None, feeds)[0])
    a, b = np.concatenate(a).astype(np.float64), np.concatenate(b).astype(np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(a), np.mean(a.argmax(-1) == b.argmax(-1))


def test_pruned_demo_model_reports_fidelity_of_its_outputs(tmp_path):
    result = spa_compiler.prune(str(DEMO), ratio=0.3, output=str(tmp_path / "p.onnx"))
    fid = result.report["fidelity"]
    (name, out), = fid["outputs"].items()
    assert out["kind"] == "float" and "top1" in out  # (batch, 10) class scores
    error, agree = _independent_error(str(DEMO), str(tmp_path / "p.onnx"))
    assert 0 < out["rel_error"] == pytest.approx(error, rel=1e-4)
    assert out["top1"] == pytest.approx(agree)
    assert -1 <= out["cosine"] < 1 and fid["rel_error"] == out["rel_error"]
    assert "16 samples" in fid["inputs"]


def test_oracle_masked_model_pruned_again_keeps_cosine_one(tmp_path):
    """Channels already zeroed consumer-side: removing exactly those changes no output."""
    compiled = compile_model(str(DIGITS))
    scores = score_groups(compiled, "l2")
    plan = make_plan(compiled.analysis, scores, PlanOptions(ratio=0.5))
    masked = masked_model(compiled, plan)
    result = spa_compiler.prune(masked, ratio=0.5, criterion="l2")
    assert {g: list(a) for g, a in result.plan.removed.items()} == {g: list(a) for g, a in plan.removed.items()}
    fid = result.report["fidelity"]
    assert fid["cosine"] > 0.99999 and fid["rel_error"] < 1e-4 and fid["top1"] == 1.0
    assert not result.report["warnings"]


def test_destructive_prune_warns_in_one_line(tmp_path):
    src = tmp_path / "digits.onnx"
    shutil.copy(DIGITS, src)
    run = CliRunner().invoke(main, ["prune", str(src), "-o", str(tmp_path / "p.onnx"), "--ratio", "0.8",
                                    "--criterion", "random", "--no-progress"])
    assert run.exit_code == 0, run.output
    warnings = [line for line in run.output.splitlines() if "fidelity collapsed" in line]
    assert len(warnings) == 1 and "--max-error" in warnings[0] and "--calib" in warnings[0]
    assert "fidelity: rel. error" in run.output


def test_calib_inputs_are_the_measurement_inputs_and_no_verify_skips(tmp_path):
    calib = ROOT / "models" / "trained" / "digits_cnn_calib.npz"
    result = spa_compiler.prune(str(DIGITS), ratio=0.2, calib=str(calib))
    assert result.report["fidelity"]["inputs"].startswith("calib (")
    assert spa_compiler.prune(str(DIGITS), ratio=0.2, verify=False).report["fidelity"] is None


def test_json_report_carries_fidelity(tmp_path):
    src = tmp_path / "demo.onnx"
    shutil.copy(DEMO, src)
    run = CliRunner().invoke(main, ["prune", str(src), "-o", str(tmp_path / "p.onnx"), "--json"])
    report = json.loads(run.output)
    assert set(report["fidelity"]) >= {"rel_error", "cosine", "top1", "outputs", "inputs"}


def test_compare_metrics_on_known_arrays():
    ref = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]], dtype=np.float32)
    reference = fidelity.Reference(["y"], [[ref]])
    same = fidelity.compare(reference, [[ref.copy()]])
    assert same["rel_error"] == 0 and same["cosine"] == pytest.approx(1) and same["top1"] == 1
    flipped = fidelity.compare(reference, [[-ref]])
    assert flipped["rel_error"] == pytest.approx(2) and flipped["cosine"] == pytest.approx(-1)
    assert flipped["top1"] == 0 and fidelity.collapse_warning(flipped)
    broken = fidelity.compare(reference, [[np.full_like(ref, np.nan)]])
    assert not broken["finite"] and broken["rel_error"] is None and fidelity.relative_error(broken) == float("inf")
    assert "non-finite" in fidelity.collapse_warning(broken)
    ints = fidelity.compare(fidelity.Reference(["ids"], [[np.array([1, 2, 3])]]), [[np.array([1, 0, 3])]])
    assert ints["outputs"]["ids"] == {"kind": "integer", "equal": pytest.approx(2 / 3)}
    # a model whose only output is class ids (ArgMax inside the graph): the changed fraction is its error, so
    # --max-error and the measured ranking are not blind to it
    assert ints["mismatch"] == pytest.approx(1 / 3) and fidelity.relative_error(ints) == pytest.approx(1 / 3)
    shorter = fidelity.compare(fidelity.Reference(["ids"], [[np.array([1, 2, 3])]]), [[np.array([1, 2])]])
    assert fidelity.relative_error(shorter) == 1.0  # a variable-length output of another length: all changed
    assert fidelity.relative_error(same) == 0 and same["mismatch"] is None


def test_one_number_per_sample_outputs_get_the_cosine_of_all_samples():
    ref = np.array([1.0, -2.0, 3.0], dtype=np.float32)  # e.g. a per-position tagger score
    result = fidelity.compare(fidelity.Reference(["s"], [[ref]]), [[np.array([1.0, 2.0, 3.0], np.float32)]])
    assert result["cosine"] == pytest.approx(6 / 14)


def test_dense_model_onnxruntime_refuses(tmp_path):
    """prune() refuses such an input up front (issue 14 D7); the measurement itself degrades to a warning."""
    import onnx

    from spa_compiler import fidelity

    model = onnx.load(str(DEMO))
    model.ir_version = 99  # onnxruntime refuses the input as it is
    path = tmp_path / "future.onnx"
    onnx.save(model, str(path))
    with pytest.raises(spa_compiler.errors.UsageError, match="onnxruntime cannot load the input model"):
        spa_compiler.prune(str(path), ratio=0.3)
    measurement, warnings = fidelity.try_measure_dense(str(path), None, 0, "auto", required=False)
    assert measurement is None and any(w.startswith("fidelity not measured") for w in warnings)
    with pytest.raises(spa_compiler.errors.UsageError, match="--max-error needs"):
        fidelity.try_measure_dense(str(path), None, 0, "auto", required=True)
