"""Statistics of consumer layers inside If/Loop/Scan bodies: their inputs made outputs of the graph.

onnxruntime hands back only the main graph's outputs, and a value computed inside a body is no tensor of
the graph at all.  A consumer in a body that reads a tensor of an outer scope needs nothing (that tensor is
the outer one); for one that reads a body's own value, the value is threaded out one scope at a time by the
op that owns the body, on a copy of the graph used only for the statistics run:

- ``If``: an extra output of the branch holding it, and of every other branch an empty tensor (a sample
  that takes another branch adds no rows: the layer never saw it);
- ``Loop`` / ``Scan``: an extra scan output, stacked over the iterations along a new leading axis
  (``scan_output_axes`` 0): every iteration's input is one more sample of what the layer reads.

:func:`expose` says, per tensor, which graph output carries it and how many stacked axes lead it;
:func:`unstack` merges those into the batch axis and returns None for an empty (branch not taken) value.
"""
from __future__ import annotations

from itertools import count
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from ..ir import graphs_of

LOOPS = ("Loop", "Scan")


def _owners(graph: gs.Graph) -> dict[int, tuple[gs.Node, gs.Graph]]:
    """id(body) -> (the node owning it, the graph holding that node)."""
    owners = {}
    for g in graphs_of(graph):
        for node in g.nodes:
            for value in node.attrs.values():
                for sub in (value if isinstance(value, list) else [value]):
                    if isinstance(sub, gs.Graph):
                        owners[id(sub)] = (node, g)
    return owners


def _homes(graph: gs.Graph) -> dict[str, tuple[gs.Graph, gs.Tensor]]:
    """Tensor name -> (the graph it belongs to: produced there or one of its inputs, the tensor)."""
    homes = {}
    for g in graphs_of(graph):
        for tensor in g.inputs:
            homes[tensor.name] = (g, tensor)
        for node in g.nodes:
            for tensor in node.outputs:
                homes[tensor.name] = (g, tensor)
    return homes


def expose(graph: gs.Graph, names: list[str]) -> dict[str, tuple[str, int]]:
    """Make each tensor of *names* (of any scope) an output of *graph*, editing *graph* (a copy) in place.

    Returns name -> (the graph output carrying it, the number of stacked iteration axes leading it).
    """
    owners, homes = _owners(graph), _homes(graph)
    serial = count()
    exposed = {}
    for name in dict.fromkeys(names):
        body, tensor = homes.get(name, (graph, None))
        stacked = 0
        while body is not graph and tensor is not None:
            node, parent = owners[id(body)]
            tensor = _thread(node, body, tensor, next(serial))
            stacked += node.op in LOOPS
            body = parent
        if tensor is None:
            continue
        if tensor not in graph.outputs:
            graph.outputs.append(tensor)
        exposed[name] = (tensor.name, stacked)
    return exposed


def _thread(node: gs.Node, body: gs.Graph, tensor: gs.Tensor, serial: int) -> gs.Variable:
    """*tensor* of *body* as a new output of *node* (see the module docstring); the outer tensor."""
    base = f"spa_stat{serial}_{body.name}"
    dtype = tensor.dtype if tensor.dtype is not None else np.float32  # float16 models keep their type
    inner = gs.Variable(f"{base}_in", dtype=dtype)
    body.nodes.append(gs.Node("Identity", name=f"{base}_id", inputs=[tensor], outputs=[inner]))
    body.outputs.append(inner)
    if node.op == "If":
        for key in ("then_branch", "else_branch"):
            other = node.attrs.get(key)
            if other is None or other is body:
                continue
            empty = gs.Variable(f"{base}_{key}_empty", dtype=dtype)
            other.nodes.append(gs.Node("Identity", name=f"{base}_{key}_id",
                                       inputs=[gs.Constant(f"{base}_{key}_zero", np.zeros((0,), dtype))],
                                       outputs=[empty]))
            other.outputs.append(empty)
    elif node.op == "Scan":
        for attribute in ("scan_output_axes", "scan_output_directions"):
            if node.attrs.get(attribute) is not None:
                node.attrs[attribute] = list(node.attrs[attribute]) + [0]
    outer = gs.Variable(f"{base}_out", dtype=dtype)
    node.outputs.append(outer)
    return outer


def unstack(value: np.ndarray, stacked: int) -> Optional[np.ndarray]:
    """*value* with its *stacked* iteration axes merged into the batch axis; None when empty."""
    value = np.asarray(value)
    if value.size == 0:
        return None
    return value.reshape(-1, *value.shape[stacked + 1:]) if stacked else value
