"""The oracle on real torchvision exports (both torch exporters, BatchNorm kept, random weights).

The models are committed as weightless skeletons (models/skeleton.py); they
were produced by ``models/export_torchvision.py --skeleton``.
"""
from __future__ import annotations

import pytest

from models.skeleton import load_materialized
from spa_compiler.cost import totals
from spa_compiler.oracle import oracle_check
from spa_compiler.pipeline import apply_plan, compile_model, score_groups
from spa_compiler.plan import PlanOptions, make_plan

from .conftest import TORCHVISION_DIR, torchvision_models

REQUIRED = {"resnet18", "mobilenet_v2", "efficientnet_b0", "densenet121", "squeezenet1_1", "googlenet",
            "shufflenet_v2_x1_0", "regnet_y_400mf", "vgg11_bn"}
# The dynamo exporter (optimize=False) writes biases as Expand(CastLike(0, x), Shape(W)) and chunks as
# SplitToSequence/SequenceAt: its own normalization paths.
DYNAMO = {"resnet18", "densenet121", "shufflenet_v2_x1_0"}
DYNAMO_DIR = TORCHVISION_DIR.parent / "torchvision_dynamo"
CASES = [(TORCHVISION_DIR, n) for n in sorted(REQUIRED)] + [(DYNAMO_DIR, n) for n in sorted(DYNAMO)]


def test_all_required_models_are_committed():
    assert REQUIRED <= set(torchvision_models())
    assert DYNAMO <= {p.stem for p in DYNAMO_DIR.glob("*.onnx")}


@pytest.fixture(scope="module", params=CASES, ids=[f"{d.name}-{n}" for d, n in CASES])
def compiled(request):
    folder, name = request.param
    model = load_materialized(str(folder / f"{name}.onnx"))
    return name, compile_model(model)


def test_oracle(compiled):
    name, c = compiled
    result = oracle_check(c, ratio=0.5, seed=0)
    assert result.groups_pruned == len([g for g in c.analysis.prunable_groups if g.exact])
    assert result.relative_error < 1e-4, f"{name}: {result.max_abs_error} vs scale {result.output_scale}"


def test_only_the_classifier_output_is_frozen(compiled):
    name, c = compiled
    frozen = [g for g in c.analysis.groups if g.frozen]
    assert len(frozen) == 1 and "graph output" in frozen[0].frozen[0], (name, [g.frozen for g in frozen])


def test_macs_fall_at_half_ratio(compiled):
    name, c = compiled
    scores = score_groups(c, "l2")
    plan = make_plan(c.analysis, scores, PlanOptions(ratio=0.5))
    assert set(plan.removed) == {g.id for g in c.analysis.prunable_groups}, "every prunable group shrinks"
    _, graph, _ = apply_plan(c, plan)
    _, dense = totals(c.graph)
    _, pruned = totals(graph)
    assert pruned < 0.55 * dense, f"{name}: MACs {pruned / dense:.2f} of dense"
