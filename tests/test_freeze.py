"""Frozen groups: what cannot be pruned exactly is kept whole, with a reason, never a crash."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from models import builders
from spa_compiler.oracle import oracle_check
from spa_compiler.pipeline import compile_model


def _frozen_reasons(model) -> list[str]:
    compiled = compile_model(model)
    return [r for g in compiled.analysis.groups for r in g.frozen]


def _net_with(op_builder):
    net = builders.Net("freeze")
    x = builders._cbr(net, "x", 8)
    y = op_builder(net, x)
    return net.model(builders._head(net, builders._cbr(net, y, 8)))


@pytest.mark.parametrize("label,build,needle", [
    ("channel reduction", lambda net, x: net.node("ReduceMean", [x], 1, net.hw[x], axes=[1], keepdims=1),
     "reduces over the channel axis"),
    ("channel softmax", lambda net, x: net.node("Softmax", [x], 8, net.hw[x], axis=1), "normalizes over the channel"),
    ("no rule", lambda net, x: net.node("LRN", [x], 8, net.hw[x], size=3), "no rule for op LRN"),
])
def test_freeze_reasons(label, build, needle):
    reasons = _frozen_reasons(_net_with(build))
    assert any(needle in r for r in reasons), (label, reasons)


def test_strided_channel_slice_freezes_but_model_still_prunes_elsewhere():
    def build(net, x):
        ins = [x, net.init("s0", np.array([0], np.int64)), net.init("s1", np.array([8], np.int64)),
               net.init("s2", np.array([1], np.int64)), net.init("s3", np.array([2], np.int64))]
        return net.node("Slice", ins, 4, net.hw[x])

    model = _net_with(build)
    reasons = _frozen_reasons(model)
    assert any("strided slice" in r for r in reasons)
    compiled = compile_model(model)
    assert compiled.analysis.prunable_groups
    assert oracle_check(compiled, 0.5).relative_error < 1e-5


def test_custom_domain_op_freezes_without_crashing():
    net = builders.Net("custom")
    x = builders._cbr(net, builders._cbr(net, "x", 8), 8)
    y = net.node("Mystery", [x], 8, net.hw[x], domain="com.example")
    model = net.model(builders._head(net, builders._cbr(net, y, 8)))
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    compiled = compile_model(model)
    reasons = [r for g in compiled.analysis.groups for r in g.frozen]
    assert any("Mystery" in r and "com.example" in r for r in reasons)
    assert compiled.analysis.prunable_groups  # the first conv's group does not touch it
