"""Property-based: random DAGs of supported ops prune correctly or freeze, never crash.

Each example builds a random CNN from the rule-covered ops (convs of any
group structure, BN, activations, residual adds, concats, splits, slices,
pooling, squeeze-excitation, channel shuffles), prunes it, and checks:
the checker passes, onnxruntime runs it, output shapes are unchanged, and
the mask oracle holds on every exact group.  CI runs a bounded number of
examples; ``SPAC_FUZZ_EXAMPLES=500 python -m pytest tests/test_fuzz_graphs.py``
is the long run.
"""
from __future__ import annotations

import os

import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import builders
from spa_compiler.oracle import oracle_check
from spa_compiler.pipeline import compile_model

EXAMPLES = int(os.environ.get("SPAC_FUZZ_EXAMPLES", "25"))


def _build(draw) -> onnx.ModelProto:
    net = builders.Net("fuzz", in_ch=3, hw=8, seed=draw(st.integers(0, 10_000)))
    tensors = [builders._cbr(net, "x", draw(st.sampled_from([4, 6, 8])))]
    for _ in range(draw(st.integers(2, 7))):
        x = draw(st.sampled_from(tensors))
        c = net.ch[x]
        step = draw(st.sampled_from(["conv", "depthwise", "grouped", "residual", "concat", "split", "slice",
                                     "pool", "se", "shuffle", "act"]))
        if step == "conv":
            y = net.act(net.bn(net.conv(x, draw(st.sampled_from([4, 6, 8, 12])), k=draw(st.sampled_from([1, 3])))),
                        draw(st.sampled_from(["Relu", "Sigmoid", "HardSwish", "LeakyRelu"])))
        elif step == "depthwise":
            y = net.act(net.bn(net.conv(x, c * draw(st.sampled_from([1, 2])), group=c)))
        elif step == "grouped" and c % 2 == 0:
            y = net.act(net.conv(x, c, group=2))
        elif step == "residual":
            y = net.act(net.binary("Add", x, net.bn(net.conv(x, c))))
        elif step == "concat":
            same = [t for t in tensors if net.hw[t] == net.hw[x]]
            y = net.concat([x, draw(st.sampled_from(same))])
        elif step == "split" and c >= 4:
            a, b = net.split(x, [c // 2, c - c // 2])
            y = net.concat([net.act(net.conv(a, c // 2)), b])
        elif step == "slice" and c >= 4:
            y = net.slice_channels(x, 1, c - 1)
        elif step == "pool" and net.hw[x] >= 4:
            y = net.maxpool(x)
        elif step == "se" and c >= 4:
            y = net.se(x, 2)
        elif step == "shuffle" and c % 2 == 0:
            y = net.shuffle(x, 2)
        else:
            y = net.act(x, "Relu")
        tensors.append(y)
    last = builders._cbr(net, tensors[-1], 6)
    return net.model(builders._head(net, last))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_random_graphs_prune_exactly_or_freeze(data):
    model = _build(data.draw)
    compiled = compile_model(model)
    assert compiled.analysis.groups
    if not any(g.exact for g in compiled.analysis.prunable_groups):
        return  # everything frozen: allowed, with reasons
    result = oracle_check(compiled, ratio=data.draw(st.sampled_from([0.25, 0.5, 0.75])),
                          seed=data.draw(st.integers(0, 100)))
    assert result.relative_error < 1e-4, result
