"""Torch-free ImageNet-shaped CNNs for latency benchmarks: MobileNet-V2, MobileNet-V3-small, ResNet-50.

Random weights (latency does not care), BatchNorm kept, torchvision's
layer widths, 224x224 inputs with a dynamic batch: built with the rule-test
builder (:class:`models.builders.Net`), so ``tools/bench_latency.py`` needs no
torch.
"""
from __future__ import annotations

import numpy as np
import onnx

from models.builders import Net


def _make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _cba(net: Net, x: str, c: int, k: int = 1, stride: int = 1, group: int = 1, act: str = "Relu") -> str:
    y = net.bn(net.conv(x, c, k=k, group=group, bias=False, stride=stride))
    if act == "Relu6":
        low, high = (net.init(net._name("clip"), np.array(v, np.float32)) for v in (0.0, 6.0))
        return net.node("Clip", [y, low, high], net.ch[y], net.hw[y])
    return net.act(y, act) if act else y


def _classifier(net: Net, x: str, hidden: int = 0, act: str = "Relu") -> onnx.ModelProto:
    y = net.flatten(net.gap(x))
    if hidden:
        y = net.act(net.gemm(y, hidden), act)
    return net.model([net.gemm(y, 1000)])


def mobilenet_v2(hw: int = 224) -> onnx.ModelProto:
    net = Net("mobilenet_v2", hw=hw)
    x = _cba(net, "x", 32, k=3, stride=2, act="Relu6")
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        for i in range(n):
            stride, cin = (s if i == 0 else 1), net.ch[x]
            y = _cba(net, x, cin * t, act="Relu6") if t != 1 else x
            y = _cba(net, y, cin * t, k=3, stride=stride, group=cin * t, act="Relu6")
            y = _cba(net, y, c, act="")
            x = net.binary("Add", x, y) if stride == 1 and cin == c else y
    return _classifier(net, _cba(net, x, 1280, act="Relu6"))


def _se(net: Net, x: str) -> str:
    s = net.reduce_mean(x)
    s = net.act(net.conv(s, _make_divisible(net.ch[x] // 4), k=1))
    s = net.act(net.conv(s, net.ch[x], k=1), "HardSigmoid", alpha=1 / 6)
    return net.binary("Mul", x, s)


def mobilenet_v3_small(hw: int = 224) -> onnx.ModelProto:
    net = Net("mobilenet_v3_small", hw=hw)
    x = _cba(net, "x", 16, k=3, stride=2, act="HardSwish")
    for k, exp, out, se, act, s in ((3, 16, 16, True, "Relu", 2), (3, 72, 24, False, "Relu", 2),
                                    (3, 88, 24, False, "Relu", 1), (5, 96, 40, True, "HardSwish", 2),
                                    (5, 240, 40, True, "HardSwish", 1), (5, 240, 40, True, "HardSwish", 1),
                                    (5, 120, 48, True, "HardSwish", 1), (5, 144, 48, True, "HardSwish", 1),
                                    (5, 288, 96, True, "HardSwish", 2), (5, 576, 96, True, "HardSwish", 1),
                                    (5, 576, 96, True, "HardSwish", 1)):
        cin = net.ch[x]
        y = _cba(net, x, exp, act=act) if exp != cin else x
        y = _cba(net, y, exp, k=k, stride=s, group=exp, act=act)
        if se:
            y = _se(net, y)
        y = _cba(net, y, out, act="")
        x = net.binary("Add", x, y) if s == 1 and cin == out else y
    return _classifier(net, _cba(net, x, 576, act="HardSwish"), hidden=1024, act="HardSwish")


def resnet50(hw: int = 224) -> onnx.ModelProto:
    net = Net("resnet50", hw=hw)
    x = net.maxpool(_cba(net, "x", 64, k=7, stride=2))
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            s = stride if i == 0 else 1
            y = _cba(net, x, width)
            y = _cba(net, y, width, k=3, stride=s)
            y = _cba(net, y, width * 4, act="")
            shortcut = _cba(net, x, width * 4, stride=s, act="") if i == 0 else x
            x = net.act(net.binary("Add", shortcut, y))
    return _classifier(net, x)


NETS = {"mobilenet_v2": mobilenet_v2, "mobilenet_v3_small": mobilenet_v3_small, "resnet50": resnet50}
