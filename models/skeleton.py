"""Weightless ONNX models: keep an exporter's graph, drop its (random) weights.

A *skeleton* is a valid ONNX model in which every large floating-point
initializer has been turned into a typed graph input; the names are listed in
the metadata key ``spa_skeleton_weights``.  :func:`materialize` turns them back
into initializers filled with seeded random values of a sensible scale
(fan-in scaled weights, positive BatchNorm variances), so tests run real
exporter graphs without committing megabytes of noise.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import helper, numpy_helper

META_KEY = "spa_skeleton_weights"
_KEEP_BELOW = 16  # small tensors (shape constants, scalars) stay verbatim


def strip_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of *model* whose large float initializers are typed graph inputs."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    kept, stripped = [], []
    for init in graph.initializer:
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and \
                int(np.prod(init.dims)) >= _KEEP_BELOW:
            graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
            stripped.append(init.name)
        else:
            kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for node in graph.node:  # exporters' stack traces and debug names: bytes the tests never read
        node.doc_string = ""
        del node.metadata_props[:]
    for value in graph.value_info:
        del value.metadata_props[:]
    out.metadata_props.append(onnx.StringStringEntryProto(key=META_KEY, value=json.dumps(stripped)))
    return out


def _roles(graph: onnx.GraphProto) -> dict[str, tuple[str, int]]:
    """Map each tensor name to the (op_type, input index) that decides its distribution.

    Uses are followed through Identity nodes (TorchScript shares deduplicated
    tensors that way); a tensor that is a BatchNorm variance or scale anywhere
    must be positive, so those uses win.
    """
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}

    def root(name: str) -> str:
        while name in alias:
            name = alias[name]
        return name

    roles: dict[str, tuple[str, int]] = {}
    for node in graph.node:
        if node.op_type == "Identity":
            continue
        for i, name in enumerate(node.input):
            key = root(name)
            positive = node.op_type == "BatchNormalization" and i in (1, 4)
            if key not in roles or positive:
                roles[key] = (node.op_type, i)
    return roles


def materialize(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Turn a skeleton back into a runnable model with seeded random weights."""
    names = next((json.loads(p.value) for p in model.metadata_props if p.key == META_KEY), [])
    if not names:
        return model
    rng = np.random.default_rng(seed)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    wanted = set(names)
    roles = _roles(graph)
    inputs = {vi.name: vi for vi in graph.input}
    for name in names:
        vi = inputs[name]
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        op, idx = roles.get(name, ("", -1))
        if op == "BatchNormalization" and idx in (1, 4):  # scale, variance
            values = rng.uniform(0.5, 1.5, size=shape)
        elif op == "BatchNormalization":  # bias, mean
            values = rng.normal(0.0, 0.1, size=shape)
        elif len(shape) >= 2:
            fan_in = int(np.prod(shape[1:])) if op != "MatMul" else shape[0]
            values = rng.normal(0.0, np.sqrt(2.0 / max(fan_in, 1)), size=shape)
        else:
            values = rng.normal(0.0, 0.1, size=shape)
        np_type = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        graph.initializer.append(numpy_helper.from_array(values.astype(np_type), name))
    kept_inputs = [vi for vi in graph.input if vi.name not in wanted]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    props = [p for p in out.metadata_props if p.key != META_KEY]
    del out.metadata_props[:]
    out.metadata_props.extend(props)
    return out


def load_materialized(path: str, seed: int = 0) -> onnx.ModelProto:
    """Load a skeleton (or a plain model) from *path*, ready to run."""
    return materialize(onnx.load(path), seed)
