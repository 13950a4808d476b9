"""Timing single-op models in onnxruntime: the only code here that reads a clock.

Each measurement builds a one-node model (a Conv, a depthwise Conv or a
MatMul with random weights) at the widths asked for, runs it on the chosen
provider and thread count, and subtracts the runtime's fixed per-run cost
(an Identity model of the same input): a layer's table holds what its
width changes.  Sessions of one batch are timed in interleaved rounds so
machine noise hits every width alike.
"""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .layers import CONVS, DEPTHWISE, Layer, conv_dims

ROUNDS, RUNS, WARMUP = 3, 7, 2


class Timer(Protocol):
    """Milliseconds of one run of *layer* at input width *c_in* and output width *c_out*, for many at once."""

    def __call__(self, layer: Layer, widths: Sequence[tuple[int, int]]) -> list[float]: ...


def op_model(layer: Layer, c_in: int, c_out: int, seed: int = 0) -> onnx.ModelProto:
    """A one-node model of *layer* at widths (c_in, c_out) with random weights."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(layer.dtype)
    if layer.kind in CONVS:
        n, dims, kernel, strides, pads, dilations = conv_dims(layer.fixed)
        group = c_in if layer.kind == DEPTHWISE else 1
        c_out = c_in if layer.kind == DEPTHWISE else c_out
        weight = rng.standard_normal((c_out, c_in // group, *kernel)).astype(dtype)
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=kernel, strides=strides, pads=pads,
                                dilations=dilations, group=group)
        x_dims = [n, c_in, *dims]
        inits = [numpy_helper.from_array(weight, "w"),
                 numpy_helper.from_array(rng.standard_normal(c_out).astype(dtype), "b")]
    else:
        (rows,) = layer.fixed
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        x_dims = [rows, c_in]
        inits = [numpy_helper.from_array(rng.standard_normal((c_in, c_out)).astype(dtype), "w")]
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    graph = helper.make_graph([node], "op", [helper.make_tensor_value_info("x", elem, x_dims)],
                              [helper.make_tensor_value_info("y", elem, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def identity_model(dims: Sequence[int], elem: int = TensorProto.FLOAT) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "overhead",
                              [helper.make_tensor_value_info("x", elem, list(dims))],
                              [helper.make_tensor_value_info("y", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


class OnnxruntimeTimer:
    """The real :class:`Timer`: onnxruntime sessions on *providers* with *threads* intra-op threads."""

    def __init__(self, providers: Sequence[str], threads: int = 0) -> None:
        self.providers, self.threads = list(providers), threads

    def __call__(self, layer: Layer, widths: Sequence[tuple[int, int]]) -> list[float]:
        models = [op_model(layer, ci, co) for ci, co in widths]
        first = models[0].graph.input[0].type.tensor_type
        models.append(identity_model([d.dim_value for d in first.shape.dim], first.elem_type))
        medians = self.time_models(models)
        overhead = medians[-1]
        return [max(m - overhead, 1e-4) for m in medians[:-1]]

    def time_models(self, models: Sequence[onnx.ModelProto]) -> list[float]:
        """Median milliseconds per model, interleaved over rounds."""
        from ..runtime import session
        from .providers import runner, time_runs

        runs = []
        for model in models:
            sess = session(model, self.providers, self.threads)
            x = model.graph.input[0].type.tensor_type
            dtype = helper.tensor_dtype_to_np_dtype(x.elem_type)
            shape = [d.dim_value for d in x.shape.dim]
            runs.append(runner(sess, {"x": np.random.default_rng(0).standard_normal(shape).astype(dtype)}))
        samples: list[list[float]] = [[] for _ in runs]
        for _ in range(ROUNDS):
            for run, into in zip(runs, samples):
                into += time_runs(run, WARMUP, RUNS)
        return [float(np.median(s)) for s in samples]
