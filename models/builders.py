"""Small ONNX graphs built with onnx.helper: one per op rule, plus the demo CNN.

Torch-free on purpose: the rule tests and the quick-start model must build
on a fresh machine with only the core install.  ``Net`` tracks channel
counts and spatial size so each builder reads like the architecture it is.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Net:
    """A tiny NCHW graph builder with seeded random weights."""

    def __init__(self, name: str, in_ch: int = 3, hw: int = 8, seed: int = 0, opset: int = 17, batch="N"):
        self.name, self.opset = name, opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.ch: dict[str, int] = {"x": in_ch}
        self.hw: dict[str, int] = {"x": hw}
        self.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, in_ch, hw, hw])]
        self._k = 0

    def _name(self, op: str) -> str:
        self._k += 1
        return f"{op.lower()}{self._k}"

    def init(self, name: str, values: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    def node(self, op: str, inputs, ch: int, hw, outputs=None, **attrs) -> str:
        name = self._name(op)
        out = outputs or [name]
        self.nodes.append(helper.make_node(op, list(inputs), out, name=name, **attrs))
        for o in out:
            self.ch[o], self.hw[o] = ch, hw
        return out[0]

    # layers -----------------------------------------------------------------
    def conv(self, x: str, cout: int, k: int = 3, group: int = 1, bias: bool = True, stride: int = 1) -> str:
        cin = self.ch[x]
        w = self.rng.normal(0, np.sqrt(2.0 / (cin // group * k * k)), (cout, cin // group, k, k)).astype(np.float32)
        name = self._name("w")
        inputs = [x, self.init(name, w)]
        if bias:
            inputs.append(self.init(name + "_b", self.rng.normal(0, 0.1, cout).astype(np.float32)))
        hw = (self.hw[x] + 2 * (k // 2) - k) // stride + 1
        return self.node("Conv", inputs, cout, hw, kernel_shape=[k, k], pads=[k // 2] * 4, group=group,
                         strides=[stride, stride])

    def bn(self, x: str) -> str:
        c = self.ch[x]
        base = self._name("bn")
        params = [self.init(f"{base}_{p}", v.astype(np.float32)) for p, v in (
            ("scale", self.rng.uniform(0.5, 1.5, c)), ("bias", self.rng.normal(0, 0.1, c)),
            ("mean", self.rng.normal(0, 0.1, c)), ("var", self.rng.uniform(0.5, 1.5, c)))]
        return self.node("BatchNormalization", [x, *params], c, self.hw[x])

    def group_norm(self, x: str, groups: int) -> str:
        """GroupNormalization with per-channel scale and bias (opset 21's form)."""
        c = self.ch[x]
        base = self._name("gn")
        scale = self.init(f"{base}_scale", self.rng.uniform(0.5, 1.5, c).astype(np.float32))
        bias = self.init(f"{base}_bias", self.rng.normal(0, 0.1, c).astype(np.float32))
        return self.node("GroupNormalization", [x, scale, bias], c, self.hw[x], num_groups=groups)

    def torch_group_norm(self, x: str, groups: int) -> str:
        """GroupNorm as torch.onnx writes it: Reshape [0, G, -1], InstanceNorm, Reshape back, Mul, Add."""
        c, hw = self.ch[x], self.hw[x]
        base = self._name("tgn")
        flat = self.node("Reshape", [x, self.init(f"{base}_shape", np.array([0, groups, -1], np.int64))], groups, None)
        norm = self.node("InstanceNormalization", [flat, self.init(f"{base}_ones", np.ones(groups, np.float32)),
                                                   self.init(f"{base}_zeros", np.zeros(groups, np.float32))],
                         groups, None)
        back = self.node("Reshape", [norm, self.node("Shape", [x], 4, None)], c, hw)
        return self.channel_const("Add", self.channel_const("Mul", back))

    def act(self, x: str, op: str = "Relu", **attrs) -> str:
        return self.node(op, [x], self.ch[x], self.hw[x], **attrs)

    def prelu(self, x: str) -> str:
        slope = self.init(self._name("slope"), self.rng.uniform(0, 0.3, (self.ch[x], 1, 1)).astype(np.float32))
        return self.node("PRelu", [x, slope], self.ch[x], self.hw[x])

    def binary(self, op: str, a: str, b: str) -> str:
        return self.node(op, [a, b], max(self.ch.get(a, 1), self.ch.get(b, 1)), self.hw.get(a, self.hw.get(b)))

    def channel_const(self, op: str, x: str) -> str:
        c = self.init(self._name("cc"), self.rng.normal(1, 0.1, (1, self.ch[x], 1, 1)).astype(np.float32))
        return self.node(op, [x, c], self.ch[x], self.hw[x])

    def concat(self, xs: list[str]) -> str:
        return self.node("Concat", xs, sum(self.ch[x] for x in xs), self.hw[xs[0]], axis=1)

    def split(self, x: str, sizes: list[int]) -> list[str]:
        base = self._name("split")
        outs = [f"{base}_{i}" for i in range(len(sizes))]
        self.nodes.append(helper.make_node("Split", [x, self.init(base + "_sizes", np.array(sizes, np.int64))],
                                           outs, name=base, axis=1))
        for o, s in zip(outs, sizes):
            self.ch[o], self.hw[o] = s, self.hw[x]
        return outs

    def slice_channels(self, x: str, start: int, end: int) -> str:
        base = self._name("sl")
        ins = [x, self.init(base + "_s", np.array([start], np.int64)), self.init(base + "_e", np.array([end], np.int64)),
               self.init(base + "_a", np.array([1], np.int64))]
        return self.node("Slice", ins, end - start, self.hw[x])

    def maxpool(self, x: str) -> str:
        return self.node("MaxPool", [x], self.ch[x], self.hw[x] // 2, kernel_shape=[2, 2], strides=[2, 2])

    def gap(self, x: str) -> str:
        return self.node("GlobalAveragePool", [x], self.ch[x], 1)

    def reduce_mean(self, x: str) -> str:
        if self.opset >= 18:
            axes = self.init(self._name("axes"), np.array([2, 3], np.int64))
            return self.node("ReduceMean", [x, axes], self.ch[x], 1, keepdims=1)
        return self.node("ReduceMean", [x], self.ch[x], 1, keepdims=1, axes=[2, 3])

    def se(self, x: str, squeeze: int) -> str:
        s = self.reduce_mean(x)
        s = self.act(self.conv(s, squeeze, k=1))
        s = self.act(self.conv(s, self.ch[x], k=1), "Sigmoid")
        return self.binary("Mul", x, s)

    def flatten(self, x: str) -> str:
        return self.node("Flatten", [x], self.ch[x] * self.hw[x] ** 2, None, axis=1)

    def gemm(self, x: str, nout: int) -> str:
        nin = self.ch[x]
        w = self.init(self._name("fc"), self.rng.normal(0, np.sqrt(1.0 / nin), (nout, nin)).astype(np.float32))
        b = self.init(self._name("fcb"), self.rng.normal(0, 0.1, nout).astype(np.float32))
        return self.node("Gemm", [x, w, b], nout, None, transB=1)

    def shuffle(self, x: str, groups: int) -> str:
        c, hw = self.ch[x], self.hw[x]
        s1 = self.init(self._name("shp"), np.array([0, groups, c // groups, hw, hw], np.int64))
        r = self.node("Reshape", [x, s1], c, hw)
        t = self.node("Transpose", [r], c, hw, perm=[0, 2, 1, 3, 4])
        s2 = self.init(self._name("shp"), np.array([0, c, hw, hw], np.int64))
        return self.node("Reshape", [t, s2], c, hw)

    def model(self, outputs: list[str]) -> onnx.ModelProto:
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
        graph = helper.make_graph(self.nodes, self.name, self.inputs, outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  producer_name="spa-compiler-builders")
        model.ir_version = 8
        return model


def _cbr(net: Net, x: str, c: int, **kw) -> str:
    return net.act(net.bn(net.conv(x, c, bias=False, **kw)))


def _head(net: Net, x: str, classes: int = 5) -> list[str]:
    return [net.gemm(net.flatten(net.gap(x)), classes)]


def residual() -> onnx.ModelProto:
    net = Net("residual")
    x = _cbr(net, "x", 8)
    y = net.bn(net.conv(_cbr(net, x, 6), 8, bias=False))
    z = net.act(net.binary("Add", x, y))
    y2 = net.bn(net.conv(_cbr(net, z, 6), 8, bias=False))
    return net.model(_head(net, net.act(net.binary("Add", z, y2))))


def concat_dense() -> onnx.ModelProto:
    """DenseNet-style: one tensor feeds several Concats at different offsets."""
    net = Net("concat_dense")
    a = _cbr(net, "x", 6)
    b = _cbr(net, a, 4)
    ab = net.concat([a, b])
    c = _cbr(net, ab, 4)
    abc = net.concat([a, b, c])
    return net.model(_head(net, _cbr(net, abc, 8)))


def split_branches() -> onnx.ModelProto:
    net = Net("split_branches")
    x = _cbr(net, "x", 10)
    p, q = net.split(x, [4, 6])
    p2 = _cbr(net, p, 4)
    s = net.slice_channels(x, 2, 7)
    return net.model(_head(net, _cbr(net, net.concat([p2, q, s]), 8)))


def depthwise() -> onnx.ModelProto:
    net = Net("depthwise")
    x = _cbr(net, "x", 8)
    d = net.act(net.bn(net.conv(x, 8, group=8, bias=False)), "Clip")
    d2 = net.act(net.bn(net.conv(d, 16, group=8, bias=False)), "HardSwish")  # channel multiplier 2
    return net.model(_head(net, _cbr(net, d2, 8)))


def grouped() -> onnx.ModelProto:
    net = Net("grouped")
    x = _cbr(net, "x", 12)
    g = net.prelu(net.bn(net.conv(x, 12, group=3)))
    g = net.channel_const("Mul", g)
    return net.model(_head(net, _cbr(net, g, 8)))


def group_norm() -> onnx.ModelProto:
    """GroupNormalization between convs: its groups are the atoms (a partial group would change statistics)."""
    net = Net("group_norm", opset=21)
    x = net.act(net.group_norm(net.conv("x", 12), 3))
    y = net.act(net.group_norm(net.conv(x, 8), 4), "Sigmoid")
    return net.model(_head(net, _cbr(net, y, 8)))


def torch_group_norm() -> onnx.ModelProto:
    """PyTorch's exported GroupNorm (Reshape/InstanceNormalization/Reshape): whole groups are the atoms."""
    net = Net("torch_group_norm")
    x = net.act(net.torch_group_norm(net.conv("x", 12), 3))
    return net.model(_head(net, _cbr(net, x, 8)))


def se_block() -> onnx.ModelProto:
    net = Net("se_block")
    x = _cbr(net, "x", 8)
    y = net.se(x, 4)
    y = net.act(y, "LeakyRelu", alpha=0.1)
    return net.model(_head(net, _cbr(net, y, 8)))


def flatten_gemm() -> onnx.ModelProto:
    net = Net("flatten_gemm", hw=8)
    x = net.maxpool(_cbr(net, "x", 8))
    h = net.act(net.gemm(net.flatten(x), 16))
    return net.model([net.gemm(h, 5)])


def channel_shuffle() -> onnx.ModelProto:
    net = Net("channel_shuffle")
    x = _cbr(net, "x", 8)
    y = _cbr(net, x, 8)
    s = net.shuffle(net.concat([x, y]), 2)
    a, b = net.split(s, [8, 8])
    b2 = _cbr(net, b, 8)
    s2 = net.shuffle(net.concat([a, b2]), 2)
    return net.model(_head(net, _cbr(net, s2, 8)))


def unknown_op() -> onnx.ModelProto:
    """An op with no rule (LRN mixes neighbouring channels): its group freezes, the others prune."""
    net = Net("unknown_op")
    x = _cbr(net, _cbr(net, "x", 8), 8)
    y = net.node("LRN", [x], 8, net.hw[x], size=3)
    return net.model(_head(net, _cbr(net, y, 8)))


def activations() -> onnx.ModelProto:
    """Every common activation, Pad, Resize, pooling and a decomposed Erf-GELU on one channel stream."""
    net = Net("activations", opset=18)
    x = net.bn(net.conv("x", 8))
    for op, attrs in (("Relu", {}), ("Sigmoid", {}), ("HardSigmoid", {"alpha": 0.2}), ("HardSwish", {}),
                      ("Tanh", {}), ("Elu", {}), ("Selu", {}), ("Softplus", {}), ("Mish", {}),
                      ("LeakyRelu", {"alpha": 0.01}), ("Dropout", {}), ("Identity", {})):
        x = net.act(x, op, **attrs)
    half = net.init("half", np.array(0.5, np.float32))
    inv_sqrt2 = net.init("inv_sqrt2", np.array(1 / np.sqrt(2), np.float32))
    one = net.init("one", np.array(1.0, np.float32))
    erf = net.act(net.binary("Mul", x, inv_sqrt2), "Erf")
    x = net.binary("Mul", net.binary("Mul", x, net.binary("Add", erf, one)), half)  # GELU, as old exporters write it
    lo, hi = net.init("lo", np.array(0.0, np.float32)), net.init("hi", np.array(6.0, np.float32))
    x = net.node("Clip", [x, lo, hi], 8, net.hw[x])
    pads = net.init("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
    x = net.node("Pad", [x, pads], 8, net.hw[x] + 2)
    x = net.channel_const("Sub", x)
    x = net.channel_const("Div", x)
    x = net.node("AveragePool", [x], 8, net.hw[x] // 2, kernel_shape=[2, 2], strides=[2, 2])
    scales = net.init("scales", np.array([1, 1, 2, 2], np.float32))
    x = net.node("Resize", [x, "", scales], 8, net.hw[x] * 2, mode="nearest")
    y = net.conv(x, 8)
    g = net.node("GlobalMaxPool", [y], 8, 1)
    return net.model([net.gemm(net.flatten(g), 5)])


def linear_layouts() -> onnx.ModelProto:
    """ConvTranspose, channels-last MatMul (Transpose NCHW->NHWC and back) and Gemm with transB=0."""
    net = Net("linear_layouts")
    x = net.act(net.conv("x", 8))
    w = net.init("deconv_w", net.rng.normal(0, 0.3, (8, 6, 2, 2)).astype(np.float32))
    b = net.init("deconv_b", net.rng.normal(0, 0.1, 6).astype(np.float32))
    x = net.node("ConvTranspose", [x, w, b], 6, net.hw[x] * 2, kernel_shape=[2, 2], strides=[2, 2])
    x = net.act(x)
    t = net.node("Transpose", [x], 6, net.hw[x], perm=[0, 2, 3, 1])
    m = net.init("mm_w", net.rng.normal(0, 0.4, (6, 10)).astype(np.float32))
    t = net.act(net.node("MatMul", [t, m], 10, net.hw[x]))
    m2 = net.init("mm_w2", net.rng.normal(0, 0.4, (10, 7)).astype(np.float32))
    t = net.node("MatMul", [t, m2], 7, net.hw[x])
    x = net.node("Transpose", [t], 7, net.hw[x], perm=[0, 3, 1, 2])
    x = net.flatten(net.gap(net.act(x)))
    wt = net.init("fc_kn", net.rng.normal(0, 0.4, (7, 9)).astype(np.float32))
    bt = net.init("fc_kn_b", net.rng.normal(0, 0.1, 9).astype(np.float32))
    h = net.act(net.node("Gemm", [x, wt, bt], 9, None))
    return net.model([net.gemm(h, 4)])


def misc_layouts() -> onnx.ModelProto:
    """InstanceNormalization, Unsqueeze/Squeeze, Tile on spatial axes, and a weight-on-the-left MatMul (W @ x)."""
    net = Net("misc_layouts")
    x = net.act(net.conv("x", 8))
    scale = net.init("in_scale", net.rng.uniform(0.5, 1.5, 8).astype(np.float32))
    shift = net.init("in_bias", net.rng.normal(0, 0.1, 8).astype(np.float32))
    x = net.act(net.node("InstanceNormalization", [x, scale, shift], 8, net.hw[x]))
    u = net.node("Unsqueeze", [x, net.init("u_axes", np.array([2], np.int64))], 8, net.hw[x])
    x = net.node("Squeeze", [u, net.init("s_axes", np.array([2], np.int64))], 8, net.hw[x])
    x = net.node("Tile", [x, net.init("reps", np.array([1, 1, 2, 1], np.int64))], 8, net.hw[x])
    hw = net.hw[x]
    rows = net.node("Reshape", [x, net.init("to_rows", np.array([0, 8, -1], np.int64))], 8, None)
    w = net.init("left_w", net.rng.normal(0, 0.4, (6, 8)).astype(np.float32))
    y = net.act(net.node("MatMul", [w, rows], 6, None))  # [6, 8] @ [N, 8, L] -> [N, 6, L]
    w2 = net.init("left_w2", net.rng.normal(0, 0.4, (7, 6)).astype(np.float32))
    y = net.node("MatMul", [w2, y], 7, None)
    y = net.node("Reshape", [y, net.init("to_maps", np.array([0, 7, 2 * hw, hw], np.int64))], 7, hw)
    return net.model(_head(net, _cbr(net, y, 8)))


RULE_MODELS = {f.__name__: f for f in (residual, concat_dense, split_branches, depthwise, grouped, group_norm,
                                        torch_group_norm, se_block, flatten_gemm, channel_shuffle, activations,
                                        linear_layouts, misc_layouts)}


def einsum_attention(width: int = 16, heads: int = 4) -> onnx.ModelProto:
    """A one-layer attention written with Einsum (as some exporters do): one group of *heads* head atoms."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (width, width)).astype(np.float32), n)
             for n in ("wq", "wk", "wv", "wo")]
    inits.append(numpy_helper.from_array(np.array([0, 0, heads, width // heads], np.int64), "split_shape"))
    inits.append(numpy_helper.from_array(np.array([0, 0, width], np.int64), "merge_shape"))
    nodes = []
    for p in ("q", "k", "v"):
        nodes += [helper.make_node("MatMul", ["x", f"w{p}"], [f"{p}0"]),
                  helper.make_node("Reshape", [f"{p}0", "split_shape"], [f"{p}1"]),
                  helper.make_node("Transpose", [f"{p}1"], [p], perm=[0, 2, 1, 3])]
    nodes += [helper.make_node("Einsum", ["q", "k"], ["s"], equation="bhqd,bhkd->bhqk"),
              helper.make_node("Softmax", ["s"], ["p"], axis=-1),
              helper.make_node("Einsum", ["p", "v"], ["c"], equation="bhqk,bhkd->bhqd"),
              helper.make_node("Transpose", ["c"], ["c1"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["c1", "merge_shape"], ["c2"]),
              helper.make_node("MatMul", ["c2", "wo"], ["y"])]
    graph = helper.make_graph(nodes, "einsum_attention",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def demo_cnn(seed: int = 0) -> onnx.ModelProto:
    """The quick-start model: a small ResNet-style CNN (BN, residuals, SE, depthwise, concat, Gemm head)."""
    net = Net("demo_cnn", in_ch=3, hw=32, seed=seed)
    x = _cbr(net, "x", 32, stride=2)
    for width in (32, 64):
        y = _cbr(net, x, width)
        y = net.bn(net.conv(y, width, bias=False))
        if net.ch[x] != width:
            x = net.bn(net.conv(x, width, k=1, bias=False))
        x = net.act(net.binary("Add", x, net.se(y, width // 4)))
        x = net.maxpool(x)
    d = net.act(net.bn(net.conv(x, 64, group=64, bias=False)), "Clip")
    x = net.concat([x, _cbr(net, d, 32)])
    x = _cbr(net, x, 96, k=1)
    return net.model(_head(net, x, classes=10))


def resnet50(hw: int = 224, seed: int = 0, blocks: tuple[int, ...] = (3, 4, 6, 3), width: int = 64,
             classes: int = 1000) -> onnx.ModelProto:
    """A torchvision-shaped ResNet-50 (v1.5 bottlenecks, BatchNorm kept) with seeded random weights.

    For cost benchmarks where torch is not installed: the layer shapes, and so the statistics and OBS
    work, are those of the real network; *blocks* and *width* give smaller variants for tests.
    """
    net = Net("resnet50", in_ch=3, hw=hw, seed=seed)
    x = net.maxpool(_cbr(net, "x", width, k=7, stride=2))
    for stage, count in enumerate(blocks):
        mid = width * 2 ** stage
        for b in range(count):
            stride = 2 if stage > 0 and b == 0 else 1
            y = _cbr(net, _cbr(net, x, mid, k=1), mid, stride=stride)
            y = net.bn(net.conv(y, mid * 4, k=1, bias=False))
            if b == 0:
                x = net.bn(net.conv(x, mid * 4, k=1, bias=False, stride=stride))
            x = net.act(net.binary("Add", x, y))
    return net.model(_head(net, x, classes=classes))


if __name__ == "__main__":
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_cnn.onnx")
    onnx.save(demo_cnn(), path)
    print(f"wrote {path} ({os.path.getsize(path) / 1e3:.0f} kB)")
