"""Planning options: local and global ratios, round-to, exclusions, a MACs target."""
from __future__ import annotations

import numpy as np
import pytest

from models import builders
from spa_compiler import prune
from spa_compiler.errors import UsageError
from spa_compiler.pipeline import compile_model, score_groups
from spa_compiler.oracle import masked_model
from spa_compiler.pipeline import apply_plan
from spa_compiler.plan import SNAP_MIN_CHANNELS, SNAP_WIDE_CHANNELS, PlanOptions, make_plan
from spa_compiler.runtime import random_inputs, session


@pytest.fixture(scope="module")
def demo():
    compiled = compile_model(builders.demo_cnn())
    return compiled, score_groups(compiled, "l2")


def test_local_ratio_removes_the_fraction_of_every_group(demo):
    compiled, scores = demo
    plan = make_plan(compiled.analysis, scores, PlanOptions(ratio=0.25))
    for group in compiled.analysis.prunable_groups:
        assert len(plan.removed[group.id]) == int(0.25 * group.n_atoms)


def test_lowest_scores_go_first(demo):
    compiled, scores = demo
    plan = make_plan(compiled.analysis, scores, PlanOptions(ratio=0.5))
    for gid, removed in plan.removed.items():
        if len(set(compiled.analysis.groups[gid].sizes.values())) > 1:
            continue  # uneven groups may give atoms back so every tensor keeps channels
        kept = np.setdiff1d(np.arange(len(scores[gid])), removed)
        assert scores[gid][removed].max() <= scores[gid][kept].min()


def kept_per_space(analysis, plan):
    """(group id, space, channels, kept channels) of every space of every group the plan cuts."""
    for gid, removed in plan.removed.items():
        group = analysis.groups[gid]
        for space in group.spaces:
            yield gid, space, group.sizes[space], int((~np.isin(group.atom_of[space], removed)).sum())


def test_every_tensor_keeps_a_share_of_its_channels(demo):
    compiled, scores = demo
    plan = make_plan(compiled.analysis, scores, PlanOptions(ratio=0.8, max_group_ratio=0.9))
    for _, _, size, kept in kept_per_space(compiled.analysis, plan):
        assert kept >= 0.1 * size and kept >= 1


def test_round_to_keeps_multiples(demo):
    compiled, scores = demo
    plan = make_plan(compiled.analysis, scores, PlanOptions(ratio=0.3, round_to=8))
    for group in compiled.analysis.prunable_groups:
        kept = group.n_atoms - len(plan.removed.get(group.id, []))
        assert kept % 8 == 0 or kept == group.n_atoms


def _wide_concat():
    """A dense block of layers 16, 24 and 16 wide: one group holds three layers' channels."""
    net = builders.Net("wide_concat", hw=6)
    a = builders._cbr(net, "x", 16)
    b = builders._cbr(net, a, 24)
    c = builders._cbr(net, net.concat([a, b]), 16)
    return net.model(builders._head(net, builders._cbr(net, net.concat([a, b, c]), 24)))


def _cut_weight_dims(original, pruned) -> list[tuple[str, int, int]]:
    """(weight, old, new) of every Conv/Gemm weight axis the rewrite shortened."""
    before = {t.name: list(t.dims) for t in original.graph.initializer}
    after = {t.name: list(t.dims) for t in pruned.graph.initializer}
    cut = []
    for node in pruned.graph.node:
        if node.op_type in ("Conv", "Gemm") and node.input[1] in after:
            old, new = before[node.input[1]], after[node.input[1]]
            cut += [(node.input[1], o, n) for o, n in zip(old[:2], new[:2]) if o != n]
    return cut


@pytest.mark.parametrize("options", [dict(ratio=0.5), dict(ratio=0.6, global_ranking=True, max_group_ratio=0.7),
                                     dict(target_macs=0.5)])
def test_round_to_holds_in_concat_groups(options):
    """Every layer's kept channels are a multiple of round_to, also the layers feeding one concat."""
    model = _wide_concat()
    result = prune(model, criterion="l2", round_to=8, verify=False, **options)
    cut = _cut_weight_dims(model, result.model)
    assert cut, "the plan should cut something"
    assert all(new % 8 == 0 for _, _, new in cut), cut


@pytest.mark.parametrize("options", [dict(ratio=0.37), dict(ratio=0.6, global_ranking=True, max_group_ratio=0.7)])
def test_default_snap_keeps_wide_layers_on_multiples_of_8(options):
    """Default plans: a layer of 32+ channels keeps a multiple of 8, of 64+ a multiple of 16, a narrower one any
    count; round_to=1 exact."""
    model = builders.demo_cnn()
    snapped = prune(model, criterion="l2", verify=False, **options)
    cut = _cut_weight_dims(model, snapped.model)
    assert cut and all(new % 8 == 0 for _, old, new in cut if old >= SNAP_MIN_CHANNELS), cut
    assert all(new % 16 == 0 for _, old, new in cut if old >= SNAP_WIDE_CHANNELS), cut
    assert any(old >= SNAP_WIDE_CHANNELS for _, old, _ in cut), "the demo has 64- and 96-wide layers"
    exact = _cut_weight_dims(model, prune(model, criterion="l2", round_to=1, verify=False, **options).model)
    assert any(new % 8 for _, old, new in exact if old >= SNAP_MIN_CHANNELS), "round_to=1 must stay exact"
    assert snapped.report["snap"] == {"multiple": 8, "min_channels": SNAP_MIN_CHANNELS, "wide_multiple": 16,
                                      "wide_channels": SNAP_WIDE_CHANNELS}


def test_a_macs_target_lands_with_exact_widths():
    """A stated MACs budget is the contract: no snap (it overshoots on the staircase), and the target is met closely."""
    model = builders.demo_cnn()
    result = prune(model, criterion="l2", target_macs=0.55, verify=False)
    reached = result.report["macs"]["after"] / result.report["macs"]["before"]
    assert result.report["snap"] is None
    assert 0.5 <= reached <= 0.55
    cut = _cut_weight_dims(model, result.model)
    assert any(new % 8 for _, old, new in cut if old >= SNAP_MIN_CHANNELS), cut


def test_a_light_ratio_the_snap_would_undo_keeps_exact_widths():
    """Ratio 0.05 on 32-64 wide layers: the snap gives every channel back, so the plan keeps exact widths."""
    model = builders.demo_cnn()
    result = prune(model, criterion="l2", ratio=0.05, verify=False)
    assert result.report["snap"] is None
    assert _cut_weight_dims(model, result.model), "a light ratio must still remove channels"


def test_snapped_plans_pass_the_mask_oracle(demo):
    compiled, scores = demo
    plan = make_plan(compiled.analysis, scores, PlanOptions(ratio=0.37, snap=8))
    for gid, space, size, kept in kept_per_space(compiled.analysis, plan):
        assert kept == size or size < SNAP_MIN_CHANNELS or kept % (16 if size >= SNAP_WIDE_CHANNELS else 8) == 0, \
            (gid, space, kept)
    assert oracle_plan_error(compiled, plan) < 1e-5


def test_the_snap_never_demands_a_head_count():
    """Heads of 20 channels in an 80-wide layer: a 16-channel snap would keep all 4 heads; heads keep no snap."""
    compiled = compile_model(builders.einsum_attention(width=80, heads=4))
    (group,) = compiled.analysis.prunable_groups
    plan = make_plan(compiled.analysis, score_groups(compiled, "l2"), PlanOptions(ratio=0.5, snap=8))
    assert len(plan.removed.get(group.id, ())) == 2


def test_global_ranking_caps_every_group(demo):
    compiled, scores = demo
    plan = make_plan(compiled.analysis, scores, PlanOptions(ratio=0.6, global_ranking=True, max_group_ratio=0.7))
    total = sum(g.n_atoms for g in compiled.analysis.prunable_groups)
    target = int(0.6 * total)
    assert 0.9 * target <= plan.n_removed <= target  # per-tensor floors may give a few atoms back
    for group in compiled.analysis.prunable_groups:
        assert len(plan.removed.get(group.id, [])) <= int(0.7 * group.n_atoms)


def test_exclude_pattern_protects_groups(demo):
    compiled, scores = demo
    plan = make_plan(compiled.analysis, scores, PlanOptions(ratio=0.5, exclude=("conv2",)))
    protected = [g for g in compiled.analysis.prunable_groups if "conv2" in g.nodes]
    assert protected and all(g.id not in plan.removed for g in protected)
    assert all(g.id in plan.skipped for g in protected)


@pytest.mark.parametrize("target", [0.7, 0.4])
def test_target_macs_is_met(target):
    result = prune(builders.demo_cnn(), criterion="l2", target_macs=target)
    macs = result.report["macs"]
    assert macs["after"] <= target * macs["before"] * 1.02
    assert macs["after"] >= (target - 0.2) * macs["before"], "should not overshoot far below the target"


def test_bad_options():
    with pytest.raises(UsageError):
        PlanOptions(ratio=1.0).validate()
    with pytest.raises(UsageError):
        PlanOptions(round_to=0).validate()
    with pytest.raises(UsageError):
        prune(builders.demo_cnn(), target_macs=1.5)


def oracle_plan_error(compiled, plan) -> float:
    """Relative max error between the pruned model and the masked original for a given plan."""
    pruned, _, _ = apply_plan(compiled, plan)
    ref = session(masked_model(compiled, plan))
    feeds = random_inputs(ref, batch=2)
    expected, got = ref.run(None, feeds)[0], session(pruned).run(None, feeds)[0]
    return float(np.abs(expected - got).max() / max(np.abs(expected).max(), 1e-12))
