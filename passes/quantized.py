"""Normalizations for quantized graphs."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from spa_compiler.ir import all_nodes, attr, input_at
from spa_compiler.registry import register

NBITS_PER_ROW = (2, 3)  # MatMulNBits' scales and zero points: one row of entries per output feature


@register("normalize", "matmul_nbits_2d_scales")
def matmul_nbits_2d_scales(graph: gs.Graph, notes: list[str]) -> None:
    """Give MatMulNBits' flat ``[N*k_blocks]`` scales and zero points their ``[N, k_blocks]`` shape
    (onnxruntime reads both): an output feature is then a row, an input block a column, both plain
    axis slices for the analysis, the criteria and the oracle."""
    count = 0
    for node in all_nodes(graph):
        if node.op != "MatMulNBits" or node.domain != "com.microsoft":
            continue
        n = int(attr(node, "N", 0))
        for index in NBITS_PER_ROW:
            tensor = input_at(node, index)
            if not isinstance(tensor, gs.Constant) or len(tensor.shape) != 1 or not n or tensor.shape[0] % n:
                continue
            node.inputs[index] = gs.Constant(tensor.name, np.asarray(tensor.values).reshape(n, -1))
            count += 1
    if count:
        notes.append(f"matmul_nbits_2d_scales: {count} MatMulNBits scales and zero points made [N, k_blocks]")
