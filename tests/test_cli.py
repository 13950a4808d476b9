"""The command line: success paths, --json, and every bad input the core issue lists."""
from __future__ import annotations

import json
import os
import shutil

import onnx
import pytest
from click.testing import CliRunner

from models import builders
from spa_compiler.cli import main


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


@pytest.fixture
def demo(tmp_path, demo_path):
    path = tmp_path / "demo.onnx"
    shutil.copy(demo_path, path)
    return path


def test_prune_writes_a_smaller_model_and_reports(demo, tmp_path):
    out = tmp_path / "out.onnx"
    result = run("prune", demo, "-o", out, "--ratio", "0.5", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["macs"]["after"] < 0.6 * report["macs"]["before"]
    assert report["params"]["after"] < report["params"]["before"]
    assert report["verify"]["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned)
    assert os.path.getsize(out) < os.path.getsize(demo)


def test_default_output_name(demo):
    result = run("prune", demo, "--ratio", "0.3")
    assert result.exit_code == 0, result.output
    assert demo.with_name("demo.pruned.onnx").exists()


@pytest.mark.parametrize("command", ["groups", "inspect"])
def test_analysis_commands_json(demo, command):
    result = run(command, demo, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["source"] == str(demo)


def test_groups_lists_frozen_reasons(demo):
    result = run("groups", demo)
    assert result.exit_code == 0
    assert "prunable" in result.output and "frozen: reaches graph output" in result.output


def test_bench_and_verify(demo, tmp_path):
    out = tmp_path / "out.onnx"
    assert run("prune", demo, "-o", out).exit_code == 0
    bench = run("bench", demo, out, "--runs", "6", "--warmup", "1", "--json")
    assert bench.exit_code == 0, bench.output
    data = json.loads(bench.output)
    assert 0 < data["macs_ratio"] < 1 and data["a"]["median_ms"] > 0
    assert run("verify", demo, out).exit_code == 0


def test_passes_lists_builtins():
    result = run("passes", "--json")
    names = {row["name"] for row in json.loads(result.output)}
    assert {"l1", "l2", "random", "bn_scale", "fold_constants", "unshare_initializers"} <= names


# --- bad input: one line on stderr, exit 2 (usage) or 1, no output file --------------------------

def _assert_clean_failure(result, out, code=2, needle=""):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("[spac]")]
    assert len(lines) == 1 and lines[0].startswith("spac: error:"), result.output
    assert "Traceback" not in result.output
    assert needle in lines[0]
    assert not os.path.exists(out)


def test_missing_file(tmp_path):
    out = tmp_path / "o.onnx"
    _assert_clean_failure(run("prune", tmp_path / "nope.onnx", "-o", out), out, 2, "no such file")


def test_not_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("this is not a protobuf\n" * 10)
    out = tmp_path / "o.onnx"
    _assert_clean_failure(run("prune", bad, "-o", out), out, 2, str(bad))


def test_truncated_protobuf(tmp_path, demo_path):
    data = demo_path.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 3])
    out = tmp_path / "o.onnx"
    _assert_clean_failure(run("prune", bad, "-o", out), out, 2, "truncated.onnx")


@pytest.mark.parametrize("ratio", ["1.0", "-0.1", "1.5"])
def test_ratio_out_of_range(demo, tmp_path, ratio):
    out = tmp_path / "o.onnx"
    _assert_clean_failure(run("prune", demo, "-o", out, "--ratio", ratio), out, 2, "--ratio")


def test_unwritable_output(demo, tmp_path):
    out = tmp_path / "missing_dir" / "o.onnx"
    _assert_clean_failure(run("prune", demo, "-o", out), out, 2, "does not exist")


def test_output_equal_to_input_is_refused(demo):
    before = demo.read_bytes()
    result = run("prune", demo, "-o", demo)
    assert result.exit_code == 2 and "overwrite the input" in result.output
    assert demo.read_bytes() == before


def test_every_group_frozen(tmp_path):
    """A single Gemm whose output is the graph output: nothing can be pruned."""
    net = builders.Net("only_head", in_ch=4, hw=1)
    path = tmp_path / "frozen.onnx"
    onnx.save(net.model([net.gemm(net.flatten("x"), 3)]), str(path))
    out = tmp_path / "o.onnx"
    _assert_clean_failure(run("prune", path, "-o", out), out, 2, "no prunable group")


def test_unknown_criterion(demo, tmp_path):
    out = tmp_path / "o.onnx"
    _assert_clean_failure(run("prune", demo, "-o", out, "--criterion", "magic"), out, 2, "unknown criterion")


def test_transformer_flags_change_what_is_pruned(tmp_path):
    """--prune-hidden and --prune-head-dims reach the analysis: the report shows other groups going."""
    from models.skeleton import load_materialized
    from .conftest import ROOT

    path = tmp_path / "gpt2.onnx"
    onnx.save(load_materialized(str(ROOT / "models" / "transformers" / "gpt2.onnx")), str(path))
    reports = {}
    for flag in (None, "--prune-hidden", "--prune-head-dims"):
        out = tmp_path / f"{flag or 'plain'}.onnx"
        # --local: the same ratio in every group, so each flag's groups show (no measured re-allocation)
        result = run("prune", path, "-o", out, "--json", "--local", *([flag] if flag else []))
        assert result.exit_code == 0, result.output
        reports[flag] = json.loads(result.output)
    atoms = {flag: sorted(g["atoms"] for g in r["removed"]) for flag, r in reports.items()}
    assert 4 in atoms[None] and 4 not in atoms["--prune-head-dims"]  # whole heads vs head dims
    assert 32 in atoms["--prune-hidden"] and 32 not in atoms[None]    # the residual stream
    assert reports["--prune-hidden"]["params"]["after"] < reports[None]["params"]["after"]


def test_obspa_flags_reach_the_report(tmp_path):
    from .conftest import ROOT

    trained = ROOT / "models" / "trained"
    out = tmp_path / "o.onnx"
    result = run("prune", trained / "digits_cnn.onnx", "-o", out, "--criterion", "obspa", "--json",
                 "--calib", trained / "digits_cnn_calib.npz", "--recalibrate-bn", "--samples", "64")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["hessian"]["source"] == "calib" and report["compensated"] is True
    result = run("prune", trained / "digits_cnn.onnx", "-o", out, "--criterion", "l2", "--hessian", "synthetic",
                 "--compensate", "--json", "--force")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["hessian"]["source"] == "synthetic"
    bad = run("prune", trained / "digits_cnn.onnx", "-o", tmp_path / "x.onnx", "--criterion", "obspa",
              "--hessian", "calib")
    _assert_clean_failure(bad, tmp_path / "x.onnx", 2, "needs --calib")
    bad = run("prune", trained / "digits_cnn.onnx", "-o", tmp_path / "x.onnx", "--recalibrate-bn")
    _assert_clean_failure(bad, tmp_path / "x.onnx", 2, "needs --calib")
