"""OBSPA at the cost of large models: sampled patches, channel-granularity (Kronecker) Hessians, bounded batches.

Issue 12 item 5.  Each shortcut is checked against the exact computation it replaces: the sampled im2col
against the full one, the structured OBS algebra against dense OBS on ``H = channel (x) taps``, the
streamed channel statistics against the exact im2col second moment where the input really has that
structure, and the whole pipeline against the oracle's promise (a pruned model that runs, finite, with
the removed channels' weights exactly zero before the rewrite).
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import numpy_helper

import spa_compiler
from models.builders import resnet50
from spa_compiler.analysis.rules.linear import _im2col
from spa_compiler.obspa import statistics
from spa_compiler.obspa.compensate import LayerEntry, output_error
from spa_compiler.obspa.greedy import ConsumerState
from spa_compiler.obspa.obs import (ConsumerLayer, KroneckerHessian, compensate_units, damped_inverse, taps_product,
                                   unit_product)
from spa_compiler.obspa.statistics import ChannelStats, LayerStats, add_batch
from spa_compiler.pipeline import compile_model, consumer_nodes


def _conv(k: int, cin: int = 5, cout: int = 4, **attrs) -> gs.Node:
    w = gs.Constant("w", np.zeros((cout, cin, k, k), np.float32))
    return gs.Node("Conv", name="conv", inputs=[gs.Variable("x"), w], outputs=[gs.Variable("y")], attrs=attrs)


@pytest.mark.parametrize("k,stride,dilation,pads", [(3, 1, 1, [1] * 4), (3, 2, 1, [1] * 4), (7, 2, 1, [3] * 4),
                                                     (3, 1, 2, [2] * 4), (3, 2, 1, [0, 1, 2, 0]), (1, 1, 1, [0] * 4)])
def test_sampled_patches_are_the_full_im2col_rows_at_the_drawn_positions(k, stride, dilation, pads):
    node = _conv(k, strides=[stride] * 2, dilations=[dilation] * 2, pads=pads)
    x = np.random.default_rng(0).normal(size=(3, 5, 13, 11))
    full = _im2col(node, x)
    sub = _im2col(node, x, 20, np.random.default_rng(1))
    np.testing.assert_array_equal(sub, full[np.random.default_rng(1).choice(len(full), 20, replace=False)])


def _spd(n: int, rng) -> np.ndarray:
    a = rng.normal(size=(n, 2 * n))
    return a @ a.T / (2 * n) + 0.1 * np.eye(n)


def test_structured_obs_equals_dense_obs_on_the_kronecker_hessian():
    """Compensation and costs at channel granularity are exactly OBS on H = channel (x) taps."""
    rng = np.random.default_rng(0)
    channels, k, out = 6, 4, 3
    a, t = _spd(channels, rng), _spd(k, rng)
    hessian = KroneckerHessian(a, t)
    h = np.kron(a, t)
    w = rng.normal(size=(out, channels * k))
    np.testing.assert_allclose(hessian.power(w), np.sum((w @ h) * w, axis=1))
    np.testing.assert_allclose(hessian.diag(), np.diag(h))
    removed = np.array([1, 4])
    cols = (removed[:, None] * k + np.arange(k)).ravel()
    hinv = np.linalg.inv(h)
    dense = w - w[:, cols] @ np.linalg.solve(hinv[np.ix_(cols, cols)], hinv[cols, :])
    dense[:, cols] = 0.0
    np.testing.assert_allclose(compensate_units(w, hessian, np.linalg.inv(a), removed), dense, atol=1e-10)
    layer = ConsumerLayer(gs.Node("Conv", name="conv"), None, w.shape, w, k)
    stats = ChannelStats(a, t * np.mean(np.diag(a)), np.zeros(channels), np.zeros(channels), k, 1)
    entry = LayerEntry(layer, stats, 0.0)
    np.testing.assert_allclose(entry.hessian.taps, t)
    atoms = [np.array([c]) for c in range(channels)] + [removed]  # the last atom: two channels at once
    for keep_weights in (True, False):
        state = ConsumerState(entry, atoms)
        state.w, state.gram = (hessian.split(w).copy(), None) if keep_weights else (None, hessian.gram(w))
        for atom, units in enumerate(atoms):
            q = (units[:, None] * k + np.arange(k)).ravel()
            expected = 0.5 * np.trace(w[:, q] @ np.linalg.solve(hinv[np.ix_(q, q)], w[:, q].T))
            assert state.costs(np.array([atom]))[0] * state.energy == pytest.approx(expected, rel=1e-9)


def _rho(a: tuple[int, int], b: tuple[int, int]) -> float:
    """Spatial correlation of ``f + f(shifted down) + f(shifted right)`` for white f, periodic."""
    d = (b[0] - a[0], b[1] - a[1])
    return 3.0 if d == (0, 0) else 1.0 if d in ((1, 0), (0, 1), (-1, 0), (0, -1), (1, -1), (-1, 1)) else 0.0


@pytest.mark.parametrize("mean", [0.0, 2.0])
def test_channel_statistics_estimate_kronecker_inputs_as_well_as_the_exact_moment(monkeypatch, mean):
    """Channels mixed from independent stationary fields with one spatial correlation, plus a mean: their
    population im2col second moment is ``covariance (x) taps + m m^T``; the streamed ChannelStats
    estimate it about as well as the exact im2col moment of the same data (a raw-moment Kronecker
    factorization would be 30 % off with the mean)."""
    rng = np.random.default_rng(0)
    channels = 12
    mix = rng.normal(size=(channels, channels)) / np.sqrt(channels)
    fields = rng.normal(size=(64, channels, 20, 20))
    fields = fields + np.roll(fields, 1, axis=2) + np.roll(fields, 1, axis=3)
    x = np.einsum("cd,ndhw->nchw", mix, fields) + mean
    taps = [(i, j) for i in range(3) for j in range(3)]
    population = np.kron(mix @ mix.T, np.array([[_rho(a, b) for b in taps] for a in taps])) + mean ** 2
    node = _conv(3, cin=channels, pads=[0] * 4)
    monkeypatch.setattr(statistics, "DENSE_FEATURES", 0)
    stats: dict = {}
    add_batch(stats, node, x, np.random.default_rng(0), limit=1 << 20)
    assert isinstance(stats["conv"], ChannelStats)
    monkeypatch.setattr(statistics, "DENSE_FEATURES", 10_000)
    dense: dict = {}
    add_batch(dense, node, x, np.random.default_rng(0), limit=1 << 20)
    assert isinstance(dense["conv"], LayerStats)

    def error(h):
        return np.linalg.norm(h - population) / np.linalg.norm(population)

    assert error(stats["conv"].hessian().dense()) < 1.2 * error(dense["conv"].h) + 0.01
    assert error(dense["conv"].h) < 0.06
    np.testing.assert_allclose(stats["conv"].mean, mean, atol=0.1)


@pytest.mark.parametrize("channels,granular", [(227, False), (256, True)])
def test_a_3x3_conv_reading_256_channels_is_kept_at_channel_granularity(channels, granular):
    """The ResNet-50 cost target rests on this boundary (docs/obspa.md, Cost): 2304 im2col features go to
    channel granularity, 2043 keep the exact second moment."""
    x = np.random.default_rng(0).normal(size=(2, channels, 4, 4)).astype(np.float32)
    stats: dict = {}
    add_batch(stats, _conv(3, cin=channels, pads=[1] * 4), x, np.random.default_rng(0), limit=64)
    assert isinstance(stats["conv"], ChannelStats if granular else LayerStats)


def test_statistics_batches_are_bounded_by_the_exposed_bytes(monkeypatch):
    compiled = compile_model(resnet50(hw=64, blocks=(1, 1, 1, 1), width=16, classes=10))
    names = [n.inputs[0].name for n in consumer_nodes(compiled)]
    assert statistics.memory_batch(compiled, names, 64) == 64
    monkeypatch.setattr(statistics, "EXPOSED_BYTES", 1 << 20)
    assert statistics.memory_batch(compiled, names, 64) == statistics.MIN_BATCH
    monkeypatch.setattr(statistics, "EXPOSED_BYTES", 20 << 20)
    assert statistics.MIN_BATCH < statistics.memory_batch(compiled, names, 64) < 64


def test_obspa_at_channel_granularity_prunes_a_resnet(monkeypatch):
    """Every Conv at channel granularity: the pruned ResNet runs, matches its MACs target, writes finite
    weights and keeps at least as much of the outputs as no compensation."""
    monkeypatch.setattr(statistics, "DENSE_FEATURES", 0)
    model = resnet50(hw=16, blocks=(1, 1, 1, 1), width=8, classes=10)
    result = spa_compiler.prune(model, target_macs=0.7, criterion="obspa", samples=16)
    assert result.report["macs"]["after"] <= 0.71 * result.report["macs"]["before"]
    assert result.report["verify"]["outputs"] == 1  # verified: same output shapes as the dense run
    for init in result.model.graph.initializer:
        assert np.all(np.isfinite(numpy_helper.to_array(init))), init.name
    plain = spa_compiler.prune(model, target_macs=0.7, criterion="obspa", samples=16, compensate=False)
    # The driver measures every candidate plan with and without compensation: never worse than none.
    assert result.report["fidelity"]["rel_error"] <= plain.report["fidelity"]["rel_error"] * (1 + 1e-6)
    ranking = result.report["ranking"]
    assert result.report["compensated"] == ranking["compensated"]
    if not ranking["compensated"]:  # here compensation compounds across layers: written without it, and said so
        assert ranking["plain_errors"][ranking["chosen"]] < ranking["errors"][ranking["chosen"]]
        assert any("written without it" in w for w in result.report["warnings"])


def _matmul_entry(features: int, out: int, seed: int) -> tuple[LayerEntry, np.ndarray, np.ndarray]:
    """A MatMul consumer with a random positive definite H (damping 0.01): (entry, H, W)."""
    rng = np.random.default_rng(seed)
    h = _spd(features, rng)
    w = rng.normal(size=(out, features))
    layer = ConsumerLayer(gs.Node("MatMul", name="mm"), None, w.shape, w, 1)
    return LayerEntry(layer, LayerStats(h, np.zeros(features), np.zeros(features), 100), 0.01), h, w


@pytest.mark.parametrize("k", [1, 9])
def test_per_tap_products_are_the_stacked_products(k):
    """unit_product and taps_product run one GEMM where a stacked matmul ran one small product per output
    (a matrix-vector product at k = 1); they compute the same thing."""
    rng = np.random.default_rng(k)
    w3, matrix, taps = rng.normal(size=(7, 5, k)), rng.normal(size=(5, 11)), rng.normal(size=(k, k))
    np.testing.assert_allclose(unit_product(w3, matrix), np.swapaxes(np.swapaxes(w3, 1, 2) @ matrix, 1, 2),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(taps_product(w3, taps), w3 @ taps, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(taps_product(w3[:, [[0, 2], [1, 3]], :], taps), w3[:, [[0, 2], [1, 3]], :] @ taps,
                               rtol=1e-12, atol=1e-12)


def test_streamed_moments_are_the_moments_of_all_rows_whenever_read():
    """LayerStats keeps sums while rows stream in and means once read: reading between batches, then adding
    more, must still give the moments of every row so far."""
    rng = np.random.default_rng(4)
    batches = [rng.normal(size=(n, 6)).astype(np.float32) + 0.5 for n in (40, 7, 100)]
    stats = LayerStats.empty(6)
    for i, x in enumerate(batches):
        stats.add(x)
        seen = np.concatenate(batches[: i + 1]).astype(np.float64)
        if i != 1:  # read after the first and last batch only: the second adds to sums never read
            assert stats.rows == len(seen)
            np.testing.assert_allclose(stats.h, seen.T @ seen / len(seen), rtol=1e-6)
            np.testing.assert_allclose(stats.mean, seen.mean(axis=0), rtol=1e-6)
            np.testing.assert_allclose(stats.abs_mean, np.abs(seen).mean(axis=0), rtol=1e-6)


def test_damped_inverse_is_the_inverse_of_the_damped_matrix():
    rng = np.random.default_rng(0)
    h = _spd(7, rng)
    damped = h + 0.01 * np.mean(np.diag(h)) * np.eye(7)
    np.testing.assert_allclose(damped_inverse(h, 0.01) @ damped, np.eye(7), atol=1e-10)


def test_one_unit_atoms_take_the_indexed_path_with_the_same_costs_and_downdates():
    """Atoms of one unit each (every MatMul column, every channel of a structured Hessian) are costed and
    removed by array indexing (greedy.ConsumerState.single); the general block path must agree."""
    features = 12
    entry, _, _ = _matmul_entry(features, 5, seed=3)
    atoms = [np.array([a]) for a in range(features - 1)] + [np.zeros(0, int)]  # the last atom has no column here
    fast, general = ConsumerState(entry, atoms), ConsumerState(entry, atoms)
    general.single = None
    assert fast.single is not None
    alive = np.arange(len(atoms))
    for take in (np.array([2, 7]), np.array([0]), np.array([11, 5, 9])):
        np.testing.assert_allclose(fast.costs(alive), general.costs(alive), rtol=1e-12)
        fast.remove(take)
        general.remove(take)
        alive = np.setdiff1d(alive, take)
        np.testing.assert_allclose(fast.hinv, general.hinv, rtol=1e-12)
        np.testing.assert_allclose(fast.w, general.w, rtol=1e-12, atol=1e-14)


def test_small_matrices_run_with_one_blas_thread():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from spa_compiler.obspa.blas import SMALL, threads_for

    def blas_threads():
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    with threads_for(SMALL - 1):
        assert all(n == 1 for n in blas_threads())
    with threads_for(SMALL):
        assert blas_threads() == before
    assert blas_threads() == before


@pytest.mark.parametrize("keep_weights", [True, False])
def test_greedy_state_after_many_steps_is_obs_on_the_kept_units(keep_weights):
    """The greedy zeroes removed rows and compacts its matrices only now and then (greedy.COMPACT_BELOW):
    after any number of steps its inverse Hessian is the inverse of the damped H over the kept units and its
    weights are the jointly compensated ones, whether or not a compaction just happened."""
    features = 40
    entry, h, w = _matmul_entry(features, 6, seed=5)
    rng = np.random.default_rng(5)
    state = ConsumerState(entry, [np.array([a]) for a in range(features)])
    if not keep_weights:
        state.w, state.gram = None, w.T @ w
    damped = h + 0.01 * np.mean(np.diag(h)) * np.eye(features)
    gone: list[int] = []
    sizes = []
    for take in np.array_split(rng.permutation(features)[:34], 12):
        state.remove(take)
        gone.extend(take)
        sizes.append(len(state._hinv))
        kept = np.setdiff1d(np.arange(features), gone)
        np.testing.assert_array_equal(state.alive, kept)
        np.testing.assert_allclose(state.hinv, np.linalg.inv(damped[np.ix_(kept, kept)]), rtol=1e-8, atol=1e-10)
        w1 = compensate_units(w, entry.hessian, entry.hinv, np.array(gone))[:, kept]
        if keep_weights:
            np.testing.assert_allclose(state.w[:, :, 0], w1, rtol=1e-8, atol=1e-10)
        else:
            np.testing.assert_allclose(state.gram, w1.T @ w1, rtol=1e-8, atol=1e-10)
        expected = 0.5 * np.sum(w1 ** 2, axis=0) / np.diag(state.hinv) / state.energy
        np.testing.assert_allclose(state.costs(kept), expected, rtol=1e-8)
    assert features in sizes and len(set(sizes)) > 2  # some steps ran uncompacted, several compactions ran


@pytest.mark.parametrize("k,mean", [(1, 0.0), (1, 1.5), (4, 0.0), (4, 1.5)])
def test_compensation_output_moments_equal_the_direct_products(k, mean):
    """The fold's output moments come from one product of the weight change with H
    (LayerEntry.compensation); they must equal diag(W H W^T) computed directly, for exact and
    channel-granularity Hessians, with and without a mean, compensated or plain removal."""
    rng = np.random.default_rng(7)
    channels, out = 6, 5
    w = rng.normal(size=(out, channels * k))
    if k == 1:
        x = rng.normal(size=(400, channels)) + mean
        stats = LayerStats(x.T @ x / 400, x.mean(axis=0), np.abs(x).mean(axis=0), 400)
    else:
        stats = ChannelStats(_spd(channels, rng) + mean ** 2, _spd(k, rng), np.full(channels, mean),
                             np.full(channels, abs(mean)), k, 400)
    layer = ConsumerLayer(gs.Node("Conv", name="conv"), None, w.shape, w, k)
    entry = LayerEntry(layer, stats, 0.01)
    hessian = entry.hessian
    for positions in (np.array([1]), np.array([0, 3, 4])):
        outcome = entry.compensation(positions)
        np.testing.assert_allclose(outcome.power_before, hessian.power(w), rtol=1e-10)
        np.testing.assert_allclose(outcome.power_after, hessian.power(outcome.w), rtol=1e-9, atol=1e-12)
        assert outcome.error(entry.mean) == pytest.approx(output_error(w - outcome.w, hessian, entry.mean),
                                                          rel=1e-9, abs=1e-12)
        plain = entry._outcome(w, np.where(np.isin(np.arange(w.shape[1]) // k, positions), 0.0, w),
                               entry.units(positions))
        np.testing.assert_allclose(plain.power_after, hessian.power(plain.w), rtol=1e-9, atol=1e-12)


def test_compensation_updates_come_in_the_constants_types():
    """Compensated weights and folds are handed over as the rewrite stores them (float32 here), not as the
    float64 they are solved in: the ranking keeps up to three plans' updates at once."""
    from spa_compiler.obspa.compensate import ObsContext, compensate
    from spa_compiler.options import PruneOptions
    from spa_compiler.pipeline import plan_pruning, score_groups

    compiled = compile_model(resnet50(hw=32, blocks=(1, 1, 1, 1), width=8, classes=10))
    stats = statistics.collect(compiled, consumer_nodes(compiled), "bnstat", samples=16)
    obs = ObsContext(compiled.graph, compiled.analysis, stats)
    scores = score_groups(compiled, "obspa", obs=obs)
    plan = plan_pruning(compiled, scores, PruneOptions(criterion="obspa", target_macs=0.7).plan_options(), 0.7)
    updates = compensate(obs, plan)
    assert updates and all(value.dtype == obs.constant(name).dtype == np.float32 for name, value in updates.items())
    obs.release()
    assert obs.stats == {} and not obs.entries(compiled.analysis.groups[next(iter(plan.removed))])[0].stats
