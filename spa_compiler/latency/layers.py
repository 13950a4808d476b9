"""The layers a latency table times: each prunable Conv/Gemm/MatMul with its fixed dims and its two widths.

A Conv1d (a sequence model's conv) is its own kind: onnxruntime runs it as
im2col and GEMM, not on the blocked 2-D kernels, so it has its own staircase.
A layer's latency depends on its output width (the group of its output
channels) and its input width (the group of its input channels); everything
else (batch, spatial size, kernel, strides) is fixed by the model and the
input spec, and goes into the layer's *signature*, the cache key: the sixteen
identical bottleneck convs of a ResNet stage are timed once.  Layers of no
prunable group are not timed: they are part of the model's fixed rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis import DependencyAnalysis
from ..ir import const_shape
from ..shapes import concrete_shapes

Space = tuple[str, int]

CONV_1X1, CONV, DEPTHWISE, MATMUL, CONV1D = "conv1x1", "conv", "depthwise", "matmul", "conv1d"
KINDS = (CONV_1X1, CONV, DEPTHWISE, MATMUL, CONV1D)
CONVS = (CONV_1X1, CONV, DEPTHWISE, CONV1D)


@dataclass(frozen=True)
class Layer:
    """One timed layer: its kind, full widths, the spaces that set them, and the dims that stay fixed."""

    node: str
    kind: str
    c_in: int
    c_out: int
    out_space: Optional[Space]  # None: the output width never changes
    in_space: Optional[Space]
    fixed: tuple  # batch/spatial/kernel dims (conv) or rows (matmul)
    dtype: str = "float32"  # the weight's element type: an fp16 layer is timed in fp16

    @property
    def signature(self) -> str:
        """Cache key: kind, full widths, fixed dims (depthwise: one width for both) and a non-fp32 dtype."""
        key = f"{self.kind}:{self.c_in}x{self.c_out}:" + "x".join(map(str, self.fixed))
        return key if self.dtype == "float32" else f"{key}:{self.dtype}"


def conv_dims(fixed: tuple) -> tuple[int, list, list, list, list, list]:
    """A conv layer's fixed dims unpacked: batch, spatial dims, kernel, strides, pads, dilations (1-D or 2-D)."""
    rank = (len(fixed) - 1) // 6
    cut = [1, 1 + rank, 1 + 2 * rank, 1 + 3 * rank, 1 + 5 * rank, len(fixed)]
    n, *parts = [list(fixed[a:b]) for a, b in zip([0] + cut[:-1], cut)]
    return (n[0], *parts)


def timed_layers(graph: gs.Graph, analysis: DependencyAnalysis, spec=None) -> list[Layer]:
    """Every Conv (group 1 or depthwise), Gemm and weight MatMul touching a prunable group, at the spec's dims."""
    shapes = concrete_shapes(graph, spec)
    prunable = {g.id for g in analysis.prunable_groups}

    def space(tensor: gs.Tensor, axis: int) -> Optional[Space]:
        key = (tensor.name, axis)
        return key if analysis.group_of.get(key) in prunable else None

    layers = []
    for node in graph.nodes:
        layer = _layer(node, shapes, space)
        if layer is not None and (layer.out_space or layer.in_space):
            layers.append(layer)
    return layers


def _layer(node: gs.Node, shapes, space) -> Optional[Layer]:
    x, y = node.inputs[0] if node.inputs else None, node.outputs[0] if node.outputs else None
    if x is None or y is None or x.name not in shapes or y.name not in shapes or len(node.inputs) < 2:
        return None
    xs, ys, w = list(shapes[x.name]), list(shapes[y.name]), const_shape(node.inputs[1])
    if w is None or any(not isinstance(d, int) or d < 1 for d in xs + ys):
        return None
    dtype = _float_dtype(node.inputs[1])
    if dtype is None:  # an integer weight (quantized layer): not a float op this table times
        return None
    if node.op == "Conv" and len(xs) == len(w) and len(xs) in (3, 4):
        spatial = len(xs) - 2
        group = int(node.attrs.get("group", 1))
        strides = tuple(node.attrs.get("strides", [1] * spatial))
        pads = tuple(node.attrs.get("pads", [0] * 2 * spatial))
        dilations = tuple(node.attrs.get("dilations", [1] * spatial))
        fixed = (xs[0], *xs[2:], *w[2:], *strides, *pads, *dilations)
        if group == 1:
            kind = CONV1D if spatial == 1 else CONV_1X1 if tuple(w[2:]) == (1, 1) and strides == (1, 1) else CONV
            return Layer(node.name, kind, xs[1], ys[1], space(y, 1), space(x, 1), fixed, dtype)
        if group == xs[1] == ys[1] and spatial == 2:  # a depthwise Conv1d is not timed: part of the rest
            return Layer(node.name, DEPTHWISE, xs[1], ys[1], space(y, 1), space(x, 1), fixed, dtype)
        return None
    if node.op in ("Gemm", "MatMul") and len(w) == 2 and len(xs) >= 2:
        if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
            return None
        rows = 1
        for d in xs[:-1]:
            rows *= d
        return Layer(node.name, MATMUL, xs[-1], ys[-1], space(y, len(ys) - 1), space(x, len(xs) - 1), (rows,),
                     dtype)
    return None


def _float_dtype(weight: gs.Tensor) -> Optional[str]:
    """The element type a layer computes in: its weight constant's ('float32', 'float16'), None if not float.

    A dequantized weight (QDQ) is a variable computed in float32.  Read from the
    constant's dtype, so a lazily loaded weight stays unloaded.
    """
    if not isinstance(weight, gs.Constant):
        return "float32"
    dtype = np.dtype(weight.dtype) if weight.dtype is not None else None
    return dtype.name if dtype is not None and dtype.kind == "f" else None
