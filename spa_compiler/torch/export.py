"""Export a module to ONNX with marker values (provenance), then write the same graph with its real weights.

The TorchScript exporter is used with ``do_constant_folding=False`` so that
BatchNorm stays a layer and weights reach the graph as initializers (see
``models/export_torchvision.py``); the static input shapes of the example
inputs make normalization of both graphs identical.  Both models are files
in a temporary folder (``prune.py`` removes it): the exporter needs a path to
write a model over 2 GiB at all (ViT-H, RegNetY-128GF), and the pipeline
then maps their weights from disk (``weights.py``) instead of holding
protobuf, graph and runtime copies of them.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from ..errors import CompileError, UsageError, first_line
from ..ir import constants_of, meta_of, to_graph
from ..modelio import EXTERNAL_DATA_THRESHOLD, load_model, staged_output, write_graph
from ..weights import EXTERNAL_MIN_BYTES, MappedValues
from .markers import ModuleValues, TensorSlot, TensorTable, encode_range, module_tensors

OPSET = 17
# Module weights (bytes) above which the real model and the pruned one keep their weights in external data
# files: protobuf refuses messages over 2 GiB.  A module constant so that tests can lower it.
EXTERNAL_EXPORT_BYTES = EXTERNAL_DATA_THRESHOLD


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


def export_marked(table: TensorTable, module: torch.nn.Module, inputs: tuple, path: Path) -> Path:
    """Export *module* (eval mode) with its tensors holding the markers into *path*, at the inputs' shapes.

    The exporter writes the graph only (``export_params=False``): its parameters become graph inputs named as
    in the state dict, which are then made marker-valued constants streamed to external data next to *path*
    (:func:`modelio.write_graph`).  Why: exporting the weights themselves held the serialized model and a
    parsed copy of it on top of the module and its markers (ViT-L: 7.7 GB resident at 1.2 GB of weights),
    and over 2 GiB the exporter can only write them as one file per tensor anyway.  The markers still sit in
    the module while it is traced: the exporter merges inputs of equal values otherwise.
    """
    skeleton = path.with_name(f"{path.stem}.graph.onnx")
    try:
        with table.marked(module) as marked, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and legacy-exporter warnings: not the user's concern here
            torch.onnx.export(marked, inputs, str(skeleton), dynamo=False, do_constant_folding=False,
                              export_params=False, opset_version=OPSET, input_names=input_names(inputs))
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types
        raise CompileError(f"torch.onnx.export of {type(module).__name__} failed: {first_line(exc)}") from exc
    model = load_model(skeleton)
    graph = to_graph(model)
    examples = set(input_names(inputs))
    tensors = module_tensors(module)
    for var in graph.inputs:
        slot = table.by_name.get(var.name)
        if slot is not None:
            var.to_constant(MarkerValues(slot) if slot.size * 4 >= EXTERNAL_MIN_BYTES else
                            encode_range(slot.offset, slot.size).reshape(slot.shape))
        elif var.name in tensors:  # not float32 (an integer buffer): its own values
            var.to_constant(tensors[var.name].detach().cpu().numpy())
        elif var.name not in examples:
            raise CompileError(f"torch.onnx.export of {type(module).__name__}: graph input {var.name} is neither "
                               "an example input nor a module parameter or buffer")
    graph.inputs = [var for var in graph.inputs if var.name in examples]
    with staged_output(path) as stage:
        write_graph(graph, meta_of(model), stage, external=True)
    skeleton.unlink()
    return path


class MarkerValues(LazyValues):
    """One module tensor's markers, made when written (one tensor in memory at a time)."""

    def __init__(self, slot: TensorSlot):
        super().__init__(onnx.TensorProto(name=slot.name, data_type=onnx.TensorProto.FLOAT, dims=slot.shape))
        self.slot = slot

    def load(self) -> np.ndarray:
        return encode_range(self.slot.offset, self.slot.size).reshape(self.slot.shape)


class RealValues(LazyValues):
    """A marker-valued constant's real values, gathered from the module only when written (one at a time)."""

    def __init__(self, marked: LazyValues, table: TensorTable, values: ModuleValues):
        super().__init__(marked.tensor)
        self.marked, self.table, self.values = marked, table, values

    def load(self) -> np.ndarray:
        return real_array(self.marked.load(), self.table, self.values)


def real_array(marked: np.ndarray, table: TensorTable, values: ModuleValues) -> np.ndarray:
    """*marked* with every marker replaced by the module value it names (unchanged unless all are markers)."""
    index = table.decode(marked)
    return marked if index is None else values[index]


def write_real_model(marked: Path, table: TensorTable, values: ModuleValues, path: Path, external: bool) -> Path:
    """The exported graph with the module's real values, written to *path* (weights in external data when
    *external*: streamed tensor by tensor by :func:`modelio.write_graph`, never all in memory)."""
    model = load_model(marked)  # external data checked and referenced, not read
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    attr.t.CopyFrom(numpy_helper.from_array(
                        real_array(numpy_helper.to_array(attr.t), table, values), attr.t.name))
    meta = meta_of(model)
    graph = to_graph(model)
    del model
    for const in constants_of(graph).values():
        lazy = const._values
        if external and isinstance(lazy, MappedValues) and lazy.nbytes >= EXTERNAL_MIN_BYTES:  # streamed
            const._values = RealValues(lazy, table, values)
        else:  # in the protobuf already, small, or about to be embedded (gs exports a lazy value's own proto)
            const.values = real_array(np.asarray(const.values), table, values)
            const.data_location = None  # gs would otherwise keep the marker file's EXTERNAL flag
    with staged_output(path) as stage:
        write_graph(graph, meta, stage, external)
    return path


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
