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

from models.skeleton import load_materialized
from spa_compiler.oracle import masked_model
from spa_compiler.pipeline import apply_plan, compile_model, score_groups
from spa_compiler.plan import PlanOptions, make_plan
from spa_compiler.verify import random_inputs, session

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
    return random_inputs(session(model), batch=2, seed=seq, dims={"seq": seq, "s1": seq})


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


def test_swin_heads_prune_through_fused_qkv():
    compiled = compile_model(load_materialized(str(MODELS / "torchvision_transformers" / "swin_t.onnx")))
    heads = sorted({g.n_atoms for g in compiled.analysis.prunable_groups if g.n_atoms < 32})
    assert heads == [3, 6, 12, 24], heads


def test_pruned_head_count_is_rewritten():
    compiled = compile_model(load_materialized(str(MODELS / "transformers" / "bert.onnx")))
    head_groups = [g for g in compiled.analysis.prunable_groups if g.n_atoms == 4]
    scores = score_groups(compiled, "l2", groups=head_groups)
    plan = make_plan(compiled.analysis, scores, PlanOptions(ratio=0.5))
    _, graph, log = apply_plan(compiled, plan)
    widths = sorted({int(t.shape[-1]) for t in graph.tensors().values()
                     if hasattr(t, "values") and t.shape and len(t.shape) == 2 and "query" in t.name})
    assert widths == [16], widths  # 4 heads of 8 -> 2 heads of 8
