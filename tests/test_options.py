"""Options are validated once, in PruneOptions, before any analysis: a bad value costs one line, not minutes."""
from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

import spa_compiler
from spa_compiler import api
from spa_compiler.cli import main
from spa_compiler.criterion import Criterion
from spa_compiler.errors import UsageError
from spa_compiler.options import PruneOptions
from spa_compiler import registry
from spa_compiler.registry import register

# (CLI arguments, a fragment the one-line error must contain)
BAD_CLI_OPTIONS = [
    (["--target-macs", "1.5", "--criterion", "obspa"], "--target-macs must be in (0, 1]"),
    (["--target-macs", "0"], "--target-macs must be in (0, 1]"),
    (["--ratio", "1.0"], "--ratio must be in [0, 1)"),
    (["--ratio", "-0.1"], "--ratio must be in [0, 1)"),
    (["--max-group-ratio", "1.0"], "max group ratio must be in (0, 1)"),
    (["--max-group-ratio", "0"], "max group ratio must be in (0, 1)"),
    (["--round-to", "0"], "--round-to must be >= 1"),
    (["--samples", "1", "--criterion", "obspa"], "--samples must be >= 2"),
    (["--damping", "-0.5", "--criterion", "obspa"], "--damping must be >= 0"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--criterion", "nope"], "unknown criterion pass 'nope'"),
    (["--recalibrate-bn"], "--recalibrate-bn needs --calib"),
    (["--hessian", "calib", "--criterion", "obspa"], "needs --calib"),
]


@pytest.fixture
def no_analysis(monkeypatch):
    """Fail loudly (exit 1, not 2) if the pipeline reaches the analysis."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("analysis started before the options were checked")

    monkeypatch.setattr(api, "compile_model", refuse)


@pytest.mark.parametrize("args, message", BAD_CLI_OPTIONS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_option_fails_in_one_line_before_any_analysis(args, message, demo_path, tmp_path, no_analysis):
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["prune", str(demo_path), "-o", str(out), "--progress", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spac: error:") and message in lines[0], result.output
    assert "analyzing" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("field, value", [
    ("ratio", 1.0), ("ratio", "half"), ("target_macs", 1.5), ("max_group_ratio", 0.0), ("round_to", 0),
    ("round_to", 2.5), ("samples", 1), ("damping", -1.0), ("seed", -3), ("reduce", "median"), ("noise", "pink"),
    ("hessian", "nope"), ("criterion", "nope"), ("exclude", [1]),
])
def test_api_checks_every_option_before_reading_the_model(field, value, no_analysis):
    with pytest.raises(UsageError):
        spa_compiler.prune("no/such/model.onnx", **{field: value})  # the missing file would be a later error


def test_recalibrate_bn_needs_calib_in_the_api(no_analysis):
    with pytest.raises(UsageError, match="--recalibrate-bn needs --calib"):
        spa_compiler.prune("no/such/model.onnx", recalibrate_bn=True)


def test_options_are_frozen_and_resolve_the_criterion_contract_once():
    options = PruneOptions(criterion="obspa", exclude="conv1")
    assert options.exclude == ("conv1",)  # one pattern, not its characters
    assert options.ranks_globally and options.compensating and options.needs_statistics
    assert options.plan_options().score_scaling == "none"  # obspa's declared global score scaling
    local = PruneOptions(criterion="l2")
    assert not local.ranks_globally and not local.compensating and not local.needs_statistics
    assert PruneOptions(criterion="obspa", global_ranking=False, compensate=False).plan_options().global_ranking is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.ratio = 0.9


def test_registry_refuses_a_criterion_without_the_contract(monkeypatch):
    registry.load_passes()
    monkeypatch.setitem(registry._REGISTRY, "criterion", dict(registry._REGISTRY["criterion"]))  # undone after
    with pytest.raises(TypeError, match="subclass of spa_compiler.criterion.Criterion"):
        @register("criterion", "_not_a_criterion")
        class Loose:  # noqa: F841 - registration is the test
            def score(self, ctx, group):
                return None

    @register("criterion", "_declared")
    class Declared(Criterion):
        prefers_global = True

        def score(self, ctx, group):
            return ctx.rng.random(group.n_atoms)

    assert PruneOptions(criterion="_declared").ranks_globally


@pytest.mark.parametrize("message, expected", [("", ""), ("\n\n", ""), ("one", "one"), ("\nfirst\nsecond", "first"),
                                               ("x" * 500, "x" * 200)])
def test_first_line_of_an_error_is_safe_on_empty_messages(message, expected):
    from spa_compiler.errors import first_line

    assert first_line(RuntimeError(message)) == expected
