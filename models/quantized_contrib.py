"""onnxruntime contrib quantized graphs built with numpy and onnx.helper: MatMulNBits (block-wise 4-bit
weights, what onnxruntime's ``MatMulNBitsQuantizer`` and LLM exporters write) and QLinearConcat.

Packing (onnxruntime's contrib op spec): ``B`` is ``[N, k_blocks, block_size*bits/8]`` uint8 holding
``W^T`` row by row, two 4-bit codes per byte (low nibble first); ``scales`` ``[N*k_blocks]``;
``zero_points`` ``[N*ceil(k_blocks*bits/8)]`` uint8 packed the same way (default 8 without them).
Weight ``W[k, n] = (q[n, k] - zp[n, k // block]) * scale[n, k // block]``.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from spa_compiler.analysis.rules.quantized import pack_nibbles, unpack_nibbles

from .sequence import Seq

BLOCK = 16


def quantize_blockwise(w: np.ndarray, symmetric: bool, block: int = BLOCK):
    """``w`` ``[K, N]`` -> (B, scales, zero points or None) in MatMulNBits' 4-bit layout."""
    k, n = w.shape
    blocks = w.T.reshape(n, k // block, block)
    if symmetric:
        scale = np.abs(blocks).max(axis=-1) / 7.0 + 1e-8
        zero = np.full(scale.shape, 8, np.uint8)
    else:
        low, high = np.minimum(blocks.min(axis=-1), 0), np.maximum(blocks.max(axis=-1), 0)
        scale = (high - low) / 15.0 + 1e-8
        zero = np.clip(np.round(-low / scale), 0, 15).astype(np.uint8)
    codes = np.clip(np.round(blocks / scale[..., None]) + zero[..., None], 0, 15).astype(np.uint8)
    packed = pack_nibbles(codes)  # [N, k_blocks, block/2]
    zero_points = None if symmetric else pack_nibbles(zero).reshape(-1)
    return packed, scale.astype(np.float32).reshape(-1), zero_points


def _nbits(s: Seq, x: str, cin: int, cout: int, symmetric: bool, bias: bool = True) -> str:
    packed, scales, zeros = quantize_blockwise(s.rng.normal(0, 0.3, (cin, cout)).astype(np.float32), symmetric)
    inputs = [x, s.init("qb", packed), s.init("sc", scales), s.init("zp", zeros) if zeros is not None else ""]
    if bias:
        inputs += ["", s.weight("bias", (cout,), 0.1)]  # no g_idx
    return s.one("MatMulNBits", inputs, domain="com.microsoft", K=cin, N=cout, bits=4, block_size=BLOCK)


def matmul_nbits(symmetric: bool = False) -> onnx.ModelProto:
    """Three 4-bit linear layers with ReLUs between them, over [batch, seq, features] (an LLM MLP's shape)."""
    s = Seq("matmul_nbits_sym" if symmetric else "matmul_nbits", opset=17)
    s.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 32])]
    h = s.one("Relu", [_nbits(s, "x", 32, 64, symmetric)])
    h = s.one("Relu", [_nbits(s, h, 64, 48, symmetric, bias=False)])
    model = s.model([_nbits(s, h, 48, 16, symmetric)])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def dequantized(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with each MatMulNBits replaced by MatMul (+ Add) of its dequantized float weight."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes, new_inits = [], [i for i in model.graph.initializer]
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        k, n, block = attrs["K"], attrs["N"], attrs["block_size"]
        packed = inits[node.input[1]]
        codes = unpack_nibbles(packed.reshape(n, -1), k).astype(np.float32)
        k_blocks = packed.shape[1]
        scales = inits[node.input[2]].reshape(n, k_blocks)
        if len(node.input) > 3 and node.input[3]:
            zp = inits[node.input[3]].reshape(n, -1)
            zero = unpack_nibbles(zp, k_blocks).astype(np.float32)
        else:
            zero = np.full((n, k_blocks), 8, np.float32)
        w = ((codes - np.repeat(zero, block, axis=1)[:, :k]) * np.repeat(scales, block, axis=1)[:, :k]).T
        name = node.input[1] + "_float"
        new_inits.append(numpy_helper.from_array(w.astype(np.float32), name))
        has_bias = len(node.input) > 5 and node.input[5]
        mm_out = node.output[0] + "_mm" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [mm_out]))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, node.input[5]], [node.output[0]]))
    graph = helper.make_graph(nodes, model.graph.name, model.graph.input, model.graph.output, new_inits)
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out.ir_version = model.ir_version
    return out


def qlinear_concat() -> onnx.ModelProto:
    """Conv -> QuantizeLinear, two QLinearConv branches, QLinearConcat of them and of the input map ->
    DequantizeLinear -> Conv (what onnxruntime's QOperator quantizer writes for a DenseNet-style concat)."""
    s = Seq("qlinear_concat", opset=17)
    s.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])]
    a = s.one("Relu", [s.one("Conv", ["x", s.weight("w", (8, 3, 3, 3)), s.weight("b", (8,), 0.1)], pads=[1] * 4)])
    scale, zero = s.init("s", np.array(0.05, np.float32)), s.init("z", np.array(128, np.uint8))
    qa = s.one("QuantizeLinear", [a, scale, zero])
    branches = []
    for cout in (6, 4):
        w = s.rng.integers(-60, 60, (cout, 8, 1, 1)).astype(np.int8)
        w_scale = s.rng.uniform(0.002, 0.004, cout).astype(np.float32)
        branches.append(s.one("QLinearConv", [qa, scale, zero, s.init("qw", w), s.init("ws", w_scale),
                                              s.init("wz", np.zeros(cout, np.int8)), scale, zero,
                                              s.init("qb", s.rng.integers(-200, 200, cout).astype(np.int32))]))
    parts = [qa, *branches]
    inputs = [scale, zero] + [t for part in parts for t in (part, scale, zero)]
    cat = s.one("QLinearConcat", inputs, domain="com.microsoft", axis=1)
    y = s.one("DequantizeLinear", [cat, scale, zero])
    model = s.model([s.one("Conv", [y, s.weight("ow", (4, 18, 1, 1)), s.weight("ob", (4,), 0.1)])])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model
