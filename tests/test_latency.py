"""Latency-aware planning with injected timings: tables, cache keys, the planner, targets and verdicts.

Nothing here reads a clock: a fake timer gives every layer a latency from its
widths (with a staircase at multiples of 8 for the probes), and measured
dense/pruned figures are injected, so every assertion is deterministic.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner

from models import builders
from spa_compiler import prune
from spa_compiler.cli import main
from spa_compiler.errors import UsageError
from spa_compiler.latency import driver, table as table_module
from spa_compiler.latency.layers import DEPTHWISE, timed_layers
from spa_compiler.analysis import CONSUMER, PRODUCER
from spa_compiler.latency.planner import LatencyModel, LatencyPlanner
from spa_compiler.latency.speed import REPLANS, Measured, SpeedTarget, slower_line
from spa_compiler.latency.table import LatencyTable, cache_path, isotonic, machine_key, staircase_step
from spa_compiler.options import PruneOptions
from spa_compiler.pipeline import compile_model, score_groups
from spa_compiler.plan import Plan, PlanOptions


class FakeTimer:
    """MACs-like milliseconds; probes run fast only at multiples of 8 (a blocked kernel)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, layer, widths):
        self.calls += 1
        out = []
        for c_in, c_out in widths:
            if layer.node == "probe":
                out.append(float(8 * math.ceil(c_out / 8)) * (1.0 if c_out % 8 == 0 else 2.0))
                continue
            spatial = float(np.prod(layer.fixed[:3])) if len(layer.fixed) > 1 else float(layer.fixed[0])
            out.append(1e-4 * spatial * (c_out if layer.kind == DEPTHWISE else c_in * c_out))
        return out


@pytest.fixture(scope="module")
def demo():
    compiled = compile_model(builders.demo_cnn())
    return compiled, score_groups(compiled, "l2")


def test_isotonic_fit_is_monotone_and_keeps_monotone_data():
    fitted = isotonic([1.0, 3.0, 2.0, 4.0, 3.5, 5.0])
    assert np.all(np.diff(fitted) >= 0)
    assert fitted[0] == 1.0 and fitted[-1] == 5.0 and fitted[1] == fitted[2] == 2.5
    assert list(isotonic([1.0, 2.0, 3.0])) == [1.0, 2.0, 3.0]


def test_staircase_step_finds_the_fast_multiples():
    widths = list(range(33, 65))
    blocked = [float(w) if w % 8 == 0 else 3.0 * w for w in widths]  # only multiples of 8 are fast
    tiled = [100.0 if w <= 48 else 130.0 for w in widths]  # GEMM tiles of 16: 41..48 cost the same
    linear = [float(w) for w in widths]
    assert staircase_step(widths, blocked) == 8
    assert staircase_step(widths, tiled) == 16
    assert staircase_step(widths, linear) <= 2


def test_cache_is_keyed_by_provider_machine_and_signature(demo, tmp_path, monkeypatch):
    monkeypatch.setenv(table_module.CACHE_ENV, str(tmp_path))
    compiled, _ = demo
    layers = timed_layers(compiled.graph, compiled.analysis, compiled.spec)
    assert machine_key(1) != machine_key(2)
    cpu, cuda = cache_path("cpu", machine_key(1)), cache_path("cuda", machine_key(1))
    assert cpu.parent == tmp_path and cpu != cuda and cpu != cache_path("cpu", machine_key(2))
    timer = FakeTimer()
    first = LatencyTable(timer, cpu, "cpu")
    curves = [first.curves(layer) for layer in layers]
    first.save()
    signatures = {layer.signature for layer in layers}
    assert first.measured == len(signatures) + len({layer.kind for layer in layers})  # layers + one probe per kind
    again = LatencyTable(FakeTimer(), cpu, "cpu")
    assert [again.curves(layer)["out" if "out" in c else "both"].ms for layer, c in zip(layers, curves)] == \
        [c["out" if "out" in c else "both"].ms for c in curves]
    assert again.timer.calls == 0 and again.measured == 0, "the cached table is not timed again"
    other = LatencyTable(FakeTimer(), cuda, "cuda")
    other.curves(layers[0])
    assert other.timer.calls > 0, "another provider's file has its own figures"


def test_unreadable_cache_is_measured_again(tmp_path):
    path = tmp_path / "cpu-x.json"
    path.write_text("{not json")
    table = LatencyTable(FakeTimer(), path, "cpu")
    assert table.step("conv1x1") == 8
    table.save()
    assert LatencyTable(FakeTimer(), path, "cpu").step("conv1x1") == 8


def _planner(demo, scores=None, **options):
    compiled, default_scores = demo
    table = LatencyTable(FakeTimer(), None, "cpu")
    layers = timed_layers(compiled.graph, compiled.analysis, compiled.spec)
    model = LatencyModel(layers, table, compiled.analysis)
    return LatencyPlanner(compiled.analysis, scores or default_scores, PlanOptions(**options), model, table)


def test_planner_meets_the_predicted_target_on_the_staircase(demo):
    compiled, _ = demo
    planner = _planner(demo)
    dense = planner.predicted_ms()
    plan, info = planner.plan(0.5 * dense)
    assert info["predicted_ms"] <= 0.5 * dense
    assert plan.removed, "a 2x target must prune"
    for gid, removed in plan.removed.items():
        group = compiled.analysis.groups[gid]
        for space in group.spaces:
            kept = int((~np.isin(group.atom_of[space], removed)).sum())
            assert kept % 8 == 0 or kept == group.sizes[space], (gid, space, kept)
    again, _ = _planner(demo).plan(0.5 * dense)
    assert {k: list(v) for k, v in again.removed.items()} == {k: list(v) for k, v in plan.removed.items()}


def test_planner_spends_the_budget_where_importance_is_cheap(demo):
    compiled, scores = demo
    widths = {g.id: g.n_atoms for g in compiled.analysis.prunable_groups}
    cheap = 3  # conv62's 96 channels: make half of them nearly worthless
    skewed = {gid: np.ones(n) for gid, n in widths.items()}
    skewed[cheap] = np.where(np.arange(widths[cheap]) % 2 == 0, 1e-6, 1.0)
    planner = _planner(demo, skewed)
    plan, _ = planner.plan(0.97 * planner.predicted_ms())
    assert list(plan.removed) == [cheap]
    assert np.all(skewed[cheap][plan.removed[cheap]] < 1e-3), "the worthless channels go first"


def _recording_planner(planned: list):
    """A planner factory whose plans differ every call and predict the target exactly; targets go to *planned*."""

    class Planner:
        def plan(self, target_ms):
            planned.append(target_ms)
            return Plan(removed={0: np.arange(len(planned))}), {"predicted_ms": target_ms}

    return Planner


def test_speed_target_replans_while_the_measurement_misses():
    planned = []
    target = SpeedTarget(_recording_planner(planned), dense_ms=10.0, target_speedup=2.0)
    plan = target.plan()
    assert planned == [5.0]
    tighter = target.after(Measured(10.0, 6.25, "CPUExecutionProvider"), plan)  # 1.6x measured
    assert tighter is not None and planned[-1] == pytest.approx(5.0 * 0.5 / 0.625)
    for _ in range(REPLANS):
        tighter = target.after(Measured(10.0, 6.25, "CPUExecutionProvider"), tighter) or tighter
    assert target.replans == REPLANS
    line = target.missed_line(Measured(10.0, 6.25, "CPUExecutionProvider"))
    assert "--target-speedup 2" in line and "1.60x" in line and "6.250 vs 10.000 ms" in line
    assert target.after(Measured(10.0, 4.9, "CPUExecutionProvider"), plan) is None
    assert target.missed_line(Measured(10.0, 4.9, "CPUExecutionProvider")) is None


def test_replans_are_not_tightened_by_a_noisy_measurement():
    """A narrower plan measured slower than a wider one is noise: the next target comes from the best attempt."""
    planned = []
    target = SpeedTarget(_recording_planner(planned), dense_ms=10.0, target_speedup=1.3)
    plan = target.plan()
    plan = target.after(Measured(10.0, 8.22, "CPUExecutionProvider"), plan)  # 0.822 for 0.769: 1.069x inflated
    first = planned[-1]
    assert first == pytest.approx(10.0 / 1.3 * (1 / 1.3) / 0.822)
    target.after(Measured(10.0, 9.99, "CPUExecutionProvider"), plan)  # narrower, measured slower: noise
    assert planned[-1] == pytest.approx(first), "the noisy figure does not tighten the plan further"


def test_slower_than_dense_line_names_the_fix():
    slow = Measured(4.0, 5.2, "CPUExecutionProvider")
    line = slower_line(slow, round_to=1)
    assert "slower than the original" in line and "1.30x" in line and "--round-to 8" in line
    assert "--round-to" not in slower_line(slow, round_to=8) and "--target-speedup" in slower_line(slow, 8)
    assert slower_line(Measured(4.0, 4.04, "CPUExecutionProvider"), 1) is None  # within noise
    assert slower_line(Measured(4.0, 2.0, "CPUExecutionProvider"), 1) is None


@pytest.fixture
def injected(monkeypatch, tmp_path):
    """Fake tables and injected measurements for the driver: (dense ms, pruned ms) set per test."""
    figures = {"dense": 10.0, "pruned": 4.0}
    monkeypatch.setattr(table_module, "open_table",
                        lambda provider, threads=0, timer=None: LatencyTable(FakeTimer(), tmp_path / "t.json", "cpu"))
    monkeypatch.setattr(driver, "time_dense", lambda *a, **k: figures["dense"])
    monkeypatch.setattr(driver, "measure_pair",
                        lambda *a, **k: Measured(figures["dense"], figures["pruned"], "CPUExecutionProvider"))
    return figures


def test_target_speedup_reports_the_measurement(injected):
    result = prune(builders.demo_cnn(), target_speedup=2.0)
    speed = result.report["speed"]
    assert speed["met"] and speed["speedup"] == pytest.approx(2.5) and speed["replans"] == 0
    assert speed["tables"]["steps"] == {"conv": 8, "conv1x1": 8, "depthwise": 8, "matmul": 8}
    assert result.plan.removed and not any("not reached" in w for w in result.report["warnings"])


def test_target_missed_is_one_warning_with_the_figure(injected):
    injected["pruned"] = 8.0
    result = prune(builders.demo_cnn(), target_speedup=2.0)
    speed = result.report["speed"]
    assert not speed["met"] and speed["replans"] >= 1
    missed = [w for w in result.report["warnings"] if "--target-speedup 2 not reached" in w]
    assert len(missed) == 1 and "1.25x" in missed[0]


def test_check_speed_warns_when_pruned_is_slower(injected):
    injected["pruned"] = 12.0
    result = prune(builders.demo_cnn(), ratio=0.3, check_speed=True)
    assert result.report["speed"]["latency_ratio"] == pytest.approx(1.2)
    slower = [w for w in result.report["warnings"] if "slower than the original" in w]
    assert len(slower) == 1 and "--target-speedup" in slower[0] and "--round-to" not in slower[0], "already snapped"
    exact = prune(builders.demo_cnn(), ratio=0.3, round_to=1, check_speed=True)
    assert any("slower than the original" in w and "--round-to 8" in w for w in exact.report["warnings"])
    assert "speed" not in prune(builders.demo_cnn(), ratio=0.3, verify=False).report  # off by default


@pytest.mark.parametrize("options, message", [
    (dict(target_speedup=1.0), "--target-speedup must be > 1"),
    (dict(target_speedup="2"), "--target-speedup must be a number"),
    (dict(target_latency=0.0), "--target-latency must be > 0"),
    (dict(target_speedup=2.0, target_latency=3.0), "choose one target"),
    (dict(target_speedup=2.0, target_macs=0.5), "choose one target"),
    (dict(target_latency=2.0, max_error=0.1), "choose one target"),
    (dict(threads=-1), "--threads must be >= 0"),
    (dict(provider="tpu"), "unknown provider"),
])
def test_latency_options_are_validated(options, message):
    with pytest.raises(UsageError, match=message):
        PruneOptions(**options)


def _cuda_usable() -> bool:
    from spa_compiler.runtime import default_providers

    return default_providers()[0] == "CUDAExecutionProvider"


@pytest.mark.skipif(_cuda_usable(), reason="CUDA is usable here: the not-available path cannot be shown")
def test_cuda_asked_for_and_absent_is_one_line(tmp_path, demo_path):
    with pytest.raises(UsageError, match="--provider cuda: .*use --provider cpu"):
        PruneOptions(target_speedup=2.0, provider="cuda")
    for args in (["prune", str(demo_path), "-o", str(tmp_path / "p.onnx"), "--target-speedup", "2",
                  "--provider", "cuda"], ["bench", str(demo_path), str(demo_path), "--provider", "cuda"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("spac: error: --provider cuda:"), result.output
    assert not (tmp_path / "p.onnx").exists()


def test_bench_clock_is_wall_time_unless_asked_for_thread_time(monkeypatch):
    import time

    from spa_compiler.latency.providers import CLOCK_ENV, clock

    monkeypatch.delenv(CLOCK_ENV, raising=False)
    assert clock() is time.perf_counter
    monkeypatch.setenv(CLOCK_ENV, "thread")
    assert clock() is time.thread_time


class _FakeBinding:
    def __init__(self, log: list) -> None:
        self.log = log

    def bind_ortvalue_input(self, name, value):
        self.log.append(("input", name, value))

    def bind_output(self, name, device, device_id):
        self.log.append(("output", name, device, device_id))

    def synchronize_outputs(self):
        self.log.append(("sync",))


class _FakeCudaSession:
    """What the CUDA runner touches of an onnxruntime session on CUDAExecutionProvider (no GPU here)."""

    def __init__(self) -> None:
        self.log: list = []

    def get_providers(self):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def get_outputs(self):
        return [type("Meta", (), {"name": "y"})()]

    def io_binding(self):
        return _FakeBinding(self.log)

    def run_with_iobinding(self, binding):
        self.log.append(("run",))


def test_cuda_runs_bind_feeds_once_and_sync_every_run(monkeypatch):
    """IOBinding on a (mocked) CUDA session: feeds copied to the device once, outputs bound there, a sync per run."""
    import onnxruntime as ort

    from spa_compiler.latency import providers

    copies = []
    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy",
                        staticmethod(lambda value, device, device_id: copies.append((device, device_id)) or "on-device"))
    sess = _FakeCudaSession()
    run = providers.runner(sess, {"x": np.zeros((1, 3), np.float32)})
    assert copies == [("cuda", 0)] and ("input", "x", "on-device") in sess.log and ("output", "y", "cuda", 0) in sess.log
    before = len(sess.log)
    samples = providers.time_runs(run, warmup=1, runs=3)
    assert len(samples) == 3 and sess.log[before:] == [("run",), ("sync",)] * 4
    assert copies == [("cuda", 0)], "feeds are not copied again per run"
    monkeypatch.setattr("spa_compiler.runtime.default_providers", lambda: ("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert providers.providers_for("cuda") == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert providers.providers_for("cpu") == ("CPUExecutionProvider",)


def test_planner_weighs_an_atom_by_the_channels_it_holds():
    """With equal scores, one attention head (many channels) costs as much as that many single channels."""
    from pathlib import Path

    compiled = compile_model(str(Path(__file__).resolve().parent.parent / "models" / "trained" / "digits_vit.onnx"))
    equal = {g.id: np.ones(g.n_atoms) for g in compiled.analysis.prunable_groups}
    planner = _planner((compiled, equal))
    per_channel = set()
    multi = 0
    for widths in planner.widths.values():
        group = widths.group
        layers = len({p.node for p in group.params if p.role in (PRODUCER, CONSUMER)})
        channels = group.width // group.n_atoms
        multi += channels > 1
        per_channel.add(round(float(widths.loss[-2] - widths.loss[-1]) / (layers * channels), 9))
    assert multi, "the ViT's heads are groups of multi-channel atoms"
    assert per_channel == {1.0}, per_channel
