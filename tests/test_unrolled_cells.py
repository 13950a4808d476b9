"""Recurrent cells unrolled into per-step MatMul/Split/Slice graphs: hidden units prune whole, exactly."""
from __future__ import annotations

import numpy as np
import pytest

from models import unrolled
from spa_compiler.cost import totals
from spa_compiler.ir import constants_of
from spa_compiler.oracle import oracle_check
from spa_compiler.pipeline import apply_plan, compile_model, score_groups
from spa_compiler.plan import PlanOptions, make_plan
from spa_compiler.rewrite import reshare_copies

HIDDEN = 5


def _hidden_group(compiled):
    """The group that the state weight R produces (every gate block of it) and reads (its rows)."""
    return next(g for g in compiled.analysis.groups
                if {p.role for p in g.params if p.tensor.startswith("R")} == {"producer", "consumer"})


@pytest.mark.parametrize("name", sorted(unrolled.UNROLLED_MODELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_unrolled_cells_prune_exactly(name, seed):
    compiled = compile_model(unrolled.UNROLLED_MODELS[name]())
    result = oracle_check(compiled, ratio=0.5, seed=seed)
    assert result.removed_atoms > 0
    assert result.relative_error < 1e-5, f"{name}: max abs error {result.max_abs_error}"


@pytest.mark.parametrize("name", sorted(unrolled.UNROLLED_MODELS))
def test_a_hidden_unit_owns_one_column_of_every_gate_block(name):
    group = _hidden_group(compile_model(unrolled.UNROLLED_MODELS[name]()))
    assert group.prunable and group.n_atoms == HIDDEN
    gates = next(p for p in group.params if p.tensor.startswith("R") and p.role == "producer")
    atoms = group.atom_of[gates.space]
    blocks = len(atoms) // HIDDEN
    assert blocks in (3, 4)
    # column g*hidden + c of the gate pre-activations belongs to unit c, in every block g
    assert all((atoms[g * HIDDEN:(g + 1) * HIDDEN] == atoms[:HIDDEN]).all() for g in range(blocks))
    assert len(set(atoms[:HIDDEN].tolist())) == HIDDEN


def test_the_per_step_copies_of_a_weight_are_one_weight_again():
    compiled = compile_model(unrolled.unrolled_lstm())
    assert any("shared uses copied" in note for note in compiled.notes)
    plan = make_plan(compiled.analysis, score_groups(compiled, "l2"), PlanOptions(ratio=0.5))
    pruned, _, _ = apply_plan(compiled, plan)
    names = [i.name for i in pruned.graph.initializer]
    assert not [n for n in names if "__use" in n], names
    sizes = {n: int(np.prod(t.shape)) for n, t in constants_of(compiled.graph).items()
             if t.outputs and np.asarray(t.values).dtype == np.float32}
    copies = sum(size for n, size in sizes.items() if "__use" in n)
    assert copies > 0 and totals(compiled.graph)[0] == sum(sizes.values()) - copies  # dense: copies count once
    assert reshare_copies(compiled.graph.copy()) > 0  # unpruned copies are all equal to their weight
