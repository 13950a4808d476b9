"""Export a module to ONNX twice over: once with marker values (provenance), once with its real weights.

The TorchScript exporter is used with ``do_constant_folding=False`` so that
BatchNorm stays a layer and weights reach the graph as initializers (see
``models/export_torchvision.py``); the static input shapes of the example
inputs make normalization of both graphs identical.
"""
from __future__ import annotations

import io
import warnings
from typing import Optional, Sequence

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from ..errors import CompileError, UsageError, first_line
from .markers import TensorTable

OPSET = 17


def as_tuple(example_inputs) -> tuple:
    """The example inputs as the positional-argument tuple ``module(*inputs)`` takes."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise UsageError("example_inputs must be a tensor or a tuple of tensors (the module's positional inputs)")


def one_sample(inputs: tuple) -> tuple:
    """The first sample of each input when they all share a leading batch size above 1, else the inputs.

    Why batch 1: ``nn.MultiheadAttention`` reshapes (L, N, E) into (L, N*heads, head_dim); with N > 1 the
    batch and the heads share one axis and the analysis cannot tell them apart (heads stay unpruned).
    """
    sizes = {t.shape[0] if t.dim() else None for t in inputs}
    if len(sizes) == 1 and (next(iter(sizes)) or 0) > 1:
        return tuple(t[:1] for t in inputs)
    return inputs


def input_names(inputs: Sequence[torch.Tensor]) -> list[str]:
    return [f"input_{i}" for i in range(len(inputs))]


def flat_outputs(outputs) -> list[torch.Tensor]:
    """A module's outputs as a flat list of tensors, in the order the exporter lists graph outputs."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if isinstance(outputs, (tuple, list)):
        return [t for item in outputs for t in flat_outputs(item)]
    raise UsageError(f"module output of type {type(outputs).__name__} is not a tensor, tuple, list or dict")


def export_marked(table: TensorTable, module: torch.nn.Module, inputs: tuple) -> onnx.ModelProto:
    """Export a marker-valued copy of *module* (eval mode) at the example inputs' shapes."""
    marked = table.marked_copy(module).eval()
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and legacy-exporter warnings: not the user's concern here
            torch.onnx.export(marked, inputs, buffer, dynamo=False, do_constant_folding=False,
                              keep_initializers_as_inputs=False, opset_version=OPSET,
                              input_names=input_names(inputs))
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types
        raise CompileError(f"torch.onnx.export of {type(module).__name__} failed: {first_line(exc)}") from exc
    return onnx.load_from_string(buffer.getvalue())


def with_real_values(marked: onnx.ModelProto, table: TensorTable, flat: np.ndarray) -> onnx.ModelProto:
    """A copy of *marked* whose marker-valued initializers and Constant nodes hold the real values."""
    real = onnx.ModelProto()
    real.CopyFrom(marked)

    def restore(proto: onnx.TensorProto) -> None:
        index = table.decode(numpy_helper.to_array(proto))
        if index is not None:
            proto.CopyFrom(numpy_helper.from_array(flat[index], proto.name))

    for init in real.graph.initializer:
        restore(init)
    for node in real.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    restore(attr.t)
    return real


def scope_module(root: torch.nn.Module, tensor_name: str) -> Optional[str]:
    """The dotted path of the module whose export scope produced *tensor_name*, or None.

    TorchScript names nodes by scope, ``/features/features.1/features.1.0/attn/Mul`` or
    ``/grid_attention/attn_layer/attn_layer.1/Slice``: each part names a child of the module so far, or a
    path from one of its ancestors (a container's children carry the container's name)."""
    path = None
    for part in tensor_name.split("/")[1:-1]:
        prefixes = [] if path is None else [".".join(path.split(".")[:n]) for n in range(path.count(".") + 1, -1, -1)]
        candidates = [f"{prefix}.{part}" if prefix else part for prefix in prefixes] or [part]
        found = next((c for c in candidates if _has_submodule(root, c)), None)
        if found is None:
            break
        path = found
    return path


def _has_submodule(root: torch.nn.Module, path: str) -> bool:
    try:
        root.get_submodule(path)
    except AttributeError:
        return False
    return True
