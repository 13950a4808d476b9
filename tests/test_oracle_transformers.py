"""Transformers: attention heads and MLP hidden units, from both torch exporters and three model families.

Models are committed skeletons (models/export_transformers.py,
models/export_torchvision.py): tiny Hugging Face configs (BERT, DistilBERT,
GPT-2, Llama with grouped-query attention, ViT) exported by TorchScript and by
dynamo, and torchvision's vit_b_16, swin_t and convnext_tiny.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import builders
from models.skeleton import load_materialized
from spa_compiler.oracle import masked_model
from spa_compiler.pipeline import apply_plan, compile_model, score_groups
from spa_compiler.plan import PlanOptions, make_plan
from spa_compiler.runtime import random_inputs, session

MODELS = Path(__file__).resolve().parent.parent / "models"
HF = ["bert", "distilbert", "gpt2", "llama", "vit"]
CASES = [("transformers", n) for n in HF] + [("transformers_dynamo", n) for n in HF] + \
        [("torchvision_transformers", n) for n in ("vit_b_16", "swin_t", "convnext_tiny")]
HEADS = {"bert": 4, "distilbert": 4, "gpt2": 4, "vit": 4, "llama": 2}  # llama: 2 KV groups of 2 query heads
MLP = {"bert": 64, "distilbert": 64, "gpt2": 128, "vit": 64, "llama": 64}


@pytest.fixture(scope="module", params=CASES, ids=[f"{d}-{n}" for d, n in CASES])
def case(request):
    folder, name = request.param
    return name, compile_model(load_materialized(str(MODELS / folder / f"{name}.onnx")))


def _prune_exact(compiled, ratio=0.5, seed=0):
    exact = [g for g in compiled.analysis.prunable_groups if g.exact]
    scores = score_groups(compiled, "random", seed=seed, groups=exact)
    plan = make_plan(compiled.analysis, scores, PlanOptions(ratio=ratio))
    return plan, apply_plan(compiled, plan)[0]


def _feeds(model, seq):
    return random_inputs(session(model), batch=2 if seq < 8 else 3, seed=seq, dims={"seq": seq, "s1": seq})


def test_pruned_equals_masked_original_at_two_sequence_lengths(case):
    name, compiled = case
    plan, pruned = _prune_exact(compiled)
    assert plan.n_removed > 0
    masked, original = masked_model(compiled, plan), compiled.to_model()
    for seq in (5, 11):
        feeds = _feeds(original, seq)
        expected = session(masked).run(None, feeds)[0]
        got = session(pruned).run(None, feeds)[0]
        dense = session(original).run(None, feeds)[0]
        assert got.shape == dense.shape
        scale = np.abs(expected).max()
        assert np.abs(expected - got).max() < 1e-4 * scale, name
        assert np.abs(dense - got).max() > 1e-4 * scale, "pruning must change something"


@pytest.mark.parametrize("name", HF)
@pytest.mark.parametrize("folder", ["transformers", "transformers_dynamo"])
def test_heads_and_mlp_units_are_atoms(folder, name):
    compiled = compile_model(load_materialized(str(MODELS / folder / f"{name}.onnx")))
    atoms = sorted(g.n_atoms for g in compiled.analysis.prunable_groups)
    assert atoms.count(HEADS[name]) == 2, f"one head group per layer: {atoms}"
    assert atoms.count(MLP[name]) == 2, f"one MLP group per layer: {atoms}"


@pytest.mark.parametrize("name,heads", [("swin_t", [3, 6, 12, 24]), ("vit_b_16", [12])])
def test_torchvision_heads_prune(name, heads):
    """Swin: fused QKV picked apart by Gather; ViT: nn.MultiheadAttention folds heads into the batch."""
    compiled = compile_model(load_materialized(str(MODELS / "torchvision_transformers" / f"{name}.onnx")))
    found = sorted({g.n_atoms for g in compiled.analysis.prunable_groups if g.n_atoms < 32})
    assert found == heads, found


def test_pruned_head_count_is_rewritten():
    compiled = compile_model(load_materialized(str(MODELS / "transformers" / "bert.onnx")))
    head_groups = [g for g in compiled.analysis.prunable_groups if g.n_atoms == 4]
    scores = score_groups(compiled, "l2", groups=head_groups)
    plan = make_plan(compiled.analysis, scores, PlanOptions(ratio=0.5))
    _, graph, log = apply_plan(compiled, plan)
    widths = sorted({int(t.shape[-1]) for t in graph.tensors().values()
                     if hasattr(t, "values") and t.shape and len(t.shape) == 2 and "query" in t.name})
    assert widths == [16], widths  # 4 heads of 8 -> 2 heads of 8


@pytest.mark.parametrize("folder,name", [("transformers", "gpt2"), ("transformers", "llama"),
                                         ("transformers_dynamo", "gpt2")])
def test_prune_hidden_shrinks_the_residual_stream(folder, name):
    import spa_compiler

    model = load_materialized(str(MODELS / folder / f"{name}.onnx"))
    default = compile_model(model)
    assert not any(g.n_atoms == 32 for g in default.analysis.prunable_groups), "hidden is frozen by default"
    hidden = [g for g in compile_model(model, prune_hidden=True).analysis.prunable_groups if g.n_atoms == 32]
    assert len(hidden) == 1 and not hidden[0].exact, "one inexact residual-stream group"
    # per group (global_ranking=False): the measured re-allocation may spare the stream
    result = spa_compiler.prune(model, ratio=0.25, prune_hidden=True, global_ranking=False)
    widths = {int(t.dims[0]) for t in result.model.graph.initializer
              if len(t.dims) == 1 and ("ln" in t.name or "norm" in t.name)}
    assert widths == {24}, widths  # every norm of the stream lost the same 8 of 32 channels
    for seq in (5, 11):
        out = session(result.model).run(None, _feeds(result.model, seq))[0]
        assert out.shape == (2 if seq < 8 else 3, seq, 100) and np.isfinite(out).all()


def test_einsum_attention_heads_prune_exactly():
    from spa_compiler.oracle import oracle_check

    compiled = compile_model(builders.einsum_attention())
    assert [g.n_atoms for g in compiled.analysis.prunable_groups] == [4]
    assert oracle_check(compiled, 0.5).relative_error < 1e-5


@pytest.mark.parametrize("name,qk_atoms,vo_atoms", [("bert", 8, 8), ("llama", 4, 8)])
def test_head_dims_mode(name, qk_atoms, vo_atoms):
    """--prune-head-dims: Q/K dims tie through the score contraction (inexact; Llama's rotary pairs its
    dims), V/O dims are exact and pass the oracle."""
    from spa_compiler.oracle import oracle_check

    compiled = compile_model(load_materialized(str(MODELS / "transformers" / f"{name}.onnx")), head_dims=True)
    small = [g for g in compiled.analysis.prunable_groups if g.n_atoms < 16]
    assert sorted({(g.n_atoms, g.exact) for g in small}) == sorted({(qk_atoms, False), (vo_atoms, True)})
    assert oracle_check(compiled, 0.5).relative_error < 1e-5
