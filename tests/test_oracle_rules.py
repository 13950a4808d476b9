"""The mask-equivalence oracle on one small helper-built graph per op rule."""
from __future__ import annotations

import numpy as np
import pytest

from models import builders, sequence
from spa_compiler.oracle import oracle_check
from spa_compiler.pipeline import apply_plan, compile_model, score_groups
from spa_compiler.plan import PlanOptions, make_plan
from spa_compiler.runtime import random_inputs, session

RULE_MODELS = {**builders.RULE_MODELS, **sequence.EXACT_MODELS}  # + recurrent layers and QDQ activations


@pytest.mark.parametrize("name", sorted(RULE_MODELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_pruned_equals_masked_original(name, seed):
    compiled = compile_model(RULE_MODELS[name]())
    assert compiled.analysis.prunable_groups, f"{name}: nothing prunable"
    result = oracle_check(compiled, ratio=0.5, seed=seed)
    assert result.removed_atoms > 0
    assert result.relative_error < 1e-5, f"{name}: max abs error {result.max_abs_error}"


@pytest.mark.parametrize("name", sorted(RULE_MODELS))
def test_every_prunable_group_shrinks_and_outputs_keep_shape(name):
    model = RULE_MODELS[name]()
    compiled = compile_model(model)
    scores = score_groups(compiled, "l2")
    plan = make_plan(compiled.analysis, scores, PlanOptions(ratio=0.5))
    assert set(plan.removed) == {g.id for g in compiled.analysis.prunable_groups}
    pruned, _, _ = apply_plan(compiled, plan)
    feeds = random_inputs(session(model), batch=3)
    before = session(model).run(None, feeds)
    after = session(pruned).run(None, feeds)
    assert [a.shape for a in before] == [b.shape for b in after]


def test_masking_nothing_changes_nothing():
    """Sanity of the oracle itself: an unmasked model differs from the pruned one."""
    compiled = compile_model(builders.residual())
    scores = score_groups(compiled, "random")
    plan = make_plan(compiled.analysis, scores, PlanOptions(ratio=0.5))
    pruned, _, _ = apply_plan(compiled, plan)
    original = compiled.to_model()
    feeds = random_inputs(session(original), batch=2)
    a = session(original).run(None, feeds)[0]
    b = session(pruned).run(None, feeds)[0]
    assert np.abs(a - b).max() > 1e-3


def test_unknown_op_freezes_its_groups_and_the_rest_prunes():
    compiled = compile_model(builders.unknown_op())
    frozen = [g for g in compiled.analysis.groups if any("no rule for op LRN" in r for r in g.frozen)]
    assert frozen, "the group touching the custom op must be frozen"
    assert compiled.analysis.prunable_groups, "groups away from the custom op must still prune"
    result = oracle_check(compiled, ratio=0.5)
    assert result.relative_error < 1e-5


def test_group_norm_atoms_are_whole_groups_and_num_groups_shrinks():
    compiled = compile_model(builders.group_norm())
    widths = sorted((g.n_atoms, max(g.sizes.values())) for g in compiled.analysis.prunable_groups
                    if any(p.op == "GroupNormalization" for p in g.params))
    assert widths == [(3, 12), (4, 8)]  # 12 channels in 3 groups, 8 in 4: one atom per group
    scores = score_groups(compiled, "l2")
    pruned, _, _ = apply_plan(compiled, make_plan(compiled.analysis, scores, PlanOptions(ratio=0.5)))
    groups = sorted(int(a.i) for n in pruned.graph.node if n.op_type == "GroupNormalization"
                    for a in n.attribute if a.name == "num_groups")
    assert groups == [2, 2]


def test_torch_group_norm_reshape_becomes_a_split_into_groups():
    compiled = compile_model(builders.torch_group_norm())
    assert any("group_norm_as_split: 1" in note for note in compiled.notes)
    widths = sorted((g.n_atoms, max(g.sizes.values())) for g in compiled.analysis.prunable_groups)
    assert (3, 12) in widths  # 12 channels in 3 groups: one atom per group
