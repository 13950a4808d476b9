"""The Python API as users call it, including right after an exporter."""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest

from models import builders
import spa_compiler
from spa_compiler.runtime import random_inputs, session


def test_prune_model_proto_returns_model_plan_and_report(tmp_path):
    result = spa_compiler.prune(builders.demo_cnn(), ratio=0.5, criterion="l1", output=str(tmp_path / "p.onnx"))
    assert isinstance(result.model, onnx.ModelProto)
    assert result.plan.n_removed > 0
    report = result.report
    assert report["groups"]["pruned"] == len(report["removed"]) > 0
    assert all(r["atoms_removed"] < r["atoms"] for r in report["removed"])
    changed = report["initializers"]
    assert changed and all(v["after"] != v["before"] for v in changed.values())
    assert onnx.load(str(tmp_path / "p.onnx")).graph.node


@pytest.mark.parametrize("criterion", ["random", "l1", "l2", "bn_scale"])
def test_every_criterion_prunes_and_runs(criterion):
    result = spa_compiler.prune(builders.demo_cnn(), ratio=0.4, criterion=criterion, global_ranking=True)
    feeds = random_inputs(session(result.model), batch=2)
    out = session(result.model).run(None, feeds)[0]
    assert out.shape == (2, 10) and np.isfinite(out).all()


def test_zero_ratio_is_a_verified_no_op():
    result = spa_compiler.prune(builders.residual(), ratio=0.0)
    assert result.plan.n_removed == 0
    assert result.report["macs"]["after"] == result.report["macs"]["before"]


def test_seed_makes_random_pruning_deterministic():
    a = spa_compiler.prune(builders.residual(), ratio=0.5, criterion="random", seed=3)
    b = spa_compiler.prune(builders.residual(), ratio=0.5, criterion="random", seed=3)
    assert a.model.SerializeToString() == b.model.SerializeToString()


def test_export_time_pass_after_torch_onnx_export():
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16),
                                            torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3, padding=1),
                                            torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
            self.fc = torch.nn.Linear(16, 4)

        def forward(self, x):
            return self.fc(self.body(x))

    buffer = io.BytesIO()
    torch.onnx.export(Net().eval(), (torch.randn(1, 3, 16, 16),), buffer, dynamo=False,
                      do_constant_folding=False, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    result = spa_compiler.prune(onnx.load_from_string(buffer.getvalue()), ratio=0.5)
    assert result.report["params"]["after"] < result.report["params"]["before"]
