"""OBSPA's work on every core (spa_compiler/obspa/parallel.py) computes exactly what the serial loop computes.

The statistics' draws stay in the caller's order while their sums run on worker threads, the groups' greedy
runs side by side, the consumers' compensations too: the statistics, scores and written weights must be
bit-identical with one thread and with several (``SPAC_THREADS``).
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from models.builders import resnet50
from spa_compiler.obspa import statistics
from spa_compiler.obspa.compensate import ObsContext, compensate
from spa_compiler.obspa.parallel import overlapped, pool_map
from spa_compiler.options import PruneOptions
from spa_compiler.pipeline import compile_model, consumer_nodes, plan_pruning, score_groups


def _obspa(monkeypatch, threads: int):
    monkeypatch.setenv("SPAC_THREADS", str(threads))
    monkeypatch.setattr(statistics, "ROWS_PER_SAMPLE", 16)  # rows drawn at every layer (64 positions at 8x8)
    compiled = compile_model(resnet50(hw=32, blocks=(1, 1, 1, 1), width=8, classes=10))
    stats = statistics.collect(compiled, consumer_nodes(compiled), "bnstat", samples=32, batch=8)  # 4 runs
    obs = ObsContext(compiled.graph, compiled.analysis, stats)
    scores = score_groups(compiled, "obspa", obs=obs)
    plan = plan_pruning(compiled, scores, PruneOptions(criterion="obspa", target_macs=0.7).plan_options(), 0.7)
    return stats, scores, compensate(obs, plan)


def test_obspa_on_several_threads_equals_one_thread(monkeypatch):
    stats1, scores1, updates1 = _obspa(monkeypatch, 1)
    stats2, scores2, updates2 = _obspa(monkeypatch, 2)
    assert stats1.keys() == stats2.keys() and len(stats1) > 5
    for key in stats1:
        assert stats1[key].rows == stats2[key].rows
        np.testing.assert_array_equal(stats1[key].h, stats2[key].h)
        np.testing.assert_array_equal(stats1[key].mean, stats2[key].mean)
    assert scores1.keys() == scores2.keys()
    for gid in scores1:
        np.testing.assert_array_equal(scores1[gid], scores2[gid])
    assert updates1.keys() == updates2.keys() and updates1
    for name in updates1:
        np.testing.assert_array_equal(updates1[name], updates2[name])


def test_pool_map_keeps_the_order_reports_each_result_and_raises(monkeypatch):
    monkeypatch.setenv("SPAC_THREADS", "2")
    seen, threads = [], set()

    def square(x):
        threads.add(threading.get_ident())
        return x * x

    assert pool_map(square, range(20), cost=lambda x: x % 7, done=lambda i, r: seen.append((i, r))) == \
        [x * x for x in range(20)]
    assert sorted(seen) == [(x, x * x) for x in range(20)]
    assert threading.get_ident() not in threads  # the work ran on the pool's threads

    def fail(x):
        if x == 3:
            raise ValueError("task 3")
        return x

    with pytest.raises(ValueError, match="task 3"):
        pool_map(fail, range(6))
    started = []
    for x, y, start_next in overlapped(lambda x: started.append(x) or x + 1, range(5)):
        assert y == x + 1 and started == list(range(x + 1))  # the next run waits for start_next
        if x % 2:
            start_next()
    assert started == list(range(5))


@pytest.mark.parametrize("value", ["two", "0", "-1"])
def test_a_bad_thread_count_is_one_line_and_writes_nothing(monkeypatch, tmp_path, demo_path, value):
    """``SPAC_THREADS`` that is not a positive whole number is refused by name, not silently replaced."""
    from click.testing import CliRunner

    from spa_compiler.cli import main

    monkeypatch.setenv("SPAC_THREADS", value)
    out = tmp_path / "pruned.onnx"
    result = CliRunner().invoke(main, ["prune", str(demo_path), "--criterion", "obspa", "-o", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if "error:" in line]
    assert len(lines) == 1 and "SPAC_THREADS" in lines[0] and repr(value) in lines[0], result.output
    assert "Traceback" not in result.output and not out.exists()
