"""The float scores behind integer outputs: what the fidelity measurement compares where an output is ids.

A model whose output is class ids it computes itself (``ArgMax`` of its scores, ``TopK`` indices) gives the
measurement almost nothing to see: the fraction of changed ids is zero until the scores cross, and on
data-free inputs it says little about real ones (the int8 diacritizer ensemble, whose only output is two
``ArgMax``\\es gated by a ``Where``: 3.9 % of its ids changed on data-free inputs at ``--max-error 0.05``, 11 %
on real sentences).  So the float tensor each such op reads is measured too, as if it were an output
(relative L2 error, cosine, top-1 agreement); the changed-ids fraction still counts.  The ops are found by
walking back from every integer output of the graph, generally, not by model: the walk stops at each op
that makes ids from floats and does not look past it.

The taps are tensors of the dense graph; a session exposes them as extra (untyped) outputs, which
onnxruntime accepts.  A model too large to load into Python keeps its declared outputs only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import onnx

# op -> the output index that holds ids computed from the op's first (float) input
IDS_FROM_SCORES = {"ArgMax": 0, "ArgMin": 0, "TopK": 1}
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}

ModelLike = Union[onnx.ModelProto, str, Path]


def score_tensors(model: onnx.ModelProto) -> list[str]:
    """The float inputs of the id-making ops (``IDS_FROM_SCORES``) that integer outputs depend on, in graph order."""
    graph = model.graph
    producer = {name: node for node in graph.node for name in node.output if name}
    constants = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    stack = [o.name for o in graph.output if o.type.tensor_type.elem_type not in FLOAT_TYPES
             and o.type.HasField("tensor_type")]
    seen, found = set(), set()
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if name in seen or node is None:
            continue
        seen.add(name)
        index = IDS_FROM_SCORES.get(node.op_type)
        if index is not None and list(node.output).index(name) == index:
            if node.input and node.input[0] and node.input[0] not in outputs | constants:
                found.add(node.input[0])
            continue
        stack.extend(i for i in node.input if i and i not in constants)
    order = [name for node in graph.node for name in node.input if name in found]
    return list(dict.fromkeys(order))


def exposing(model: ModelLike, names: Sequence[str], max_bytes: int) -> tuple[ModelLike, list[str]]:
    """*model* with *names* among its outputs, and which of *names* it outputs.

    Names that are outputs already cost nothing; others that a main-graph node produces are appended as
    untyped outputs to a copy.  A file is loaded only when it has to be changed and is at most *max_bytes*
    on disk (else it is returned as is and only its declared outputs are measured).
    """
    from .runtime import size_on_disk

    if isinstance(model, onnx.ModelProto):
        proto = model
        if _proto_bytes(model) > max_bytes:
            return model, [n for n in names if n in {o.name for o in model.graph.output}]
    else:
        proto = onnx.load(str(model), load_external_data=False)
    declared = {o.name for o in proto.graph.output}
    produced = {name for node in proto.graph.node for name in node.output if name}
    extra = [n for n in names if n not in declared and n in produced]
    if not extra:
        return model, [n for n in names if n in declared]
    if not isinstance(model, onnx.ModelProto):
        if size_on_disk(model) > max_bytes:
            return model, [n for n in names if n in declared]
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(proto, str(Path(model).parent))
    else:
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    proto.graph.output.extend(onnx.ValueInfoProto(name=n) for n in extra)
    return proto, [n for n in names if n in declared or n in extra]


def _proto_bytes(model: onnx.ModelProto) -> int:
    try:
        return model.ByteSize()
    except Exception:  # noqa: BLE001 - protobuf raises on messages over 2 GiB
        return 2**31
