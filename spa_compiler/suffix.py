"""Masked runs from the first layer a plan changes on: the unchanged prefix of the graph runs once.

A sensitivity probe (:class:`budget.MaxErrorSearch`) prunes one group alone, and every layer before
the group's first consumer computes exactly what the dense model computes.  On a ResNet-50 at
224x224 the probes (every group at up to eight ratios) were most of OBSPA's time, each a whole
forward pass; here the graph is cut at a few positions (``CUTS``, evenly spaced in MACs along the
topological order), the tensors crossing each cut are recorded once from a run with the base
weights, and a probe runs only the part after the last cut before its first changed layer.  The
outputs are those of the whole masked graph (the same nodes on the same values), and an output the
prefix produces is the dense reference's own.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import onnx_graphsurgeon as gs

from .ir import ModelMeta, to_model
from .runtime import session

CUTS = 8  # positions the graph may be cut at (besides the start): a probe wastes at most ~1/CUTS of the MACs


def _reads(node: gs.Node) -> list[gs.Tensor]:
    """Tensors *node* reads, its bodies' reads of the outer scope included (over-approximated)."""
    reads = [t for t in node.inputs if t is not None]
    for body in node.subgraphs(recursive=True):
        reads.extend(t for inner in body.nodes for t in inner.inputs if t is not None)
    return reads


class SuffixRunner:
    """Runs of a graph (whose changeable weights are graph inputs) from the last cut before a change.

    *graph*: the masked runner's graph; *macs*: the MACs of each of its top-level nodes, in order
    (where to cut); *base*: the weight inputs' own values (what the prefix runs with).
    """

    def __init__(self, graph: gs.Graph, meta: ModelMeta, base: dict[str, np.ndarray], macs: Sequence[int],
                 cuts: int = CUTS) -> None:
        self.graph, self.meta, self.base = graph, meta, base
        self.nodes = list(graph.nodes)
        self.first_reader: dict[str, int] = {}
        for index, node in enumerate(self.nodes):
            for tensor in _reads(node):
                self.first_reader.setdefault(tensor.name, index)
        total = float(sum(macs)) or 1.0
        running = np.cumsum(np.asarray(macs, dtype=np.float64)) / total
        # cut k lies before the first node at which k/cuts of the MACs are done
        positions = {int(np.searchsorted(running, k / cuts, side="right")) + 1 for k in range(1, cuts)}
        self.cuts = sorted(p for p in positions if 0 < p < len(self.nodes))
        self.boundaries = {p: self._boundary(p) for p in self.cuts}
        self._sessions: dict[tuple, tuple[object, list[str]]] = {}
        self._recorded: dict[tuple[int, ...], list[dict[str, np.ndarray]]] = {}

    def _boundary(self, position: int) -> list[gs.Variable]:
        """Variables the nodes from *position* on read that earlier nodes produce (not graph inputs)."""
        produced = {t.name for node in self.nodes[position:] for t in node.outputs}
        inputs = {t.name for t in self.graph.inputs}
        seen: dict[str, gs.Variable] = {}
        for node in self.nodes[position:]:
            for tensor in _reads(node):
                if isinstance(tensor, gs.Variable) and tensor.name not in produced and tensor.name not in inputs \
                        and tensor.inputs:
                    seen.setdefault(tensor.name, tensor)
        return list(seen.values())

    def cut_for(self, changed: Sequence[str]) -> Optional[int]:
        """The last cut before every reader of the *changed* tensors (None: none, run the whole graph)."""
        readers = [self.first_reader[name] for name in changed if name in self.first_reader]
        if not readers:
            return None
        first = min(readers)
        usable = [p for p in self.cuts if p <= first]
        return usable[-1] if usable else None

    def run(self, position: int, names: Sequence[str], batches: list[dict[str, np.ndarray]],
            reference: list[list[np.ndarray]], fed: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
        """Outputs *names* per batch: the suffix from *position* on, the prefix's outputs from *reference*."""
        recorded = self._record(batches)
        sess, wanted = self._session(position, tuple(names))
        inputs = {i.name for i in sess.get_inputs()}
        out = []
        for feeds, cut_values, dense in zip(batches, recorded, reference):
            values = {**feeds, **fed, **cut_values}
            got = dict(zip(wanted, sess.run(wanted, {k: v for k, v in values.items() if k in inputs})))
            out.append([got[n] if n in got else dense[i] for i, n in enumerate(names)])
        return out

    def _record(self, batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """The values crossing every cut on *batches*, from one run of the whole graph with the base weights
        (recorded once per batch list)."""
        key = tuple(id(b) for b in batches)
        if key not in self._recorded:
            graph = self.graph.copy()
            tensors = graph.tensors()
            names = list(dict.fromkeys(t.name for p in self.cuts for t in self.boundaries[p]))
            for name in names:
                tensor = tensors[name]
                if tensor.dtype is None:
                    tensor.dtype = np.float32
                graph.outputs.append(tensor)
            sess = session(to_model(graph, self.meta))
            inputs = {i.name for i in sess.get_inputs()}
            self._recorded[key] = []
            for feeds in batches:
                values = {**feeds, **self.base}
                self._recorded[key].append(dict(zip(names, sess.run(names, {k: v for k, v in values.items()
                                                                            if k in inputs}))))
        return self._recorded[key]

    def _session(self, position: int, names: tuple[str, ...]) -> tuple[object, list[str]]:
        """The suffix graph from *position* on, outputting those of *names* it produces (graph outputs or
        score taps inside it), and those names."""
        key = (position, names)
        if key not in self._sessions:
            graph = self.graph.copy()
            nodes = graph.nodes[position:]
            produced = {t.name: t for node in nodes for t in node.outputs}
            tensors = graph.tensors()
            boundary = [tensors[t.name] for t in self.boundaries[position]]
            for tensor in boundary:
                if tensor.dtype is None:
                    tensor.dtype = np.float32
            graph.nodes = nodes
            graph.inputs = list(graph.inputs) + boundary
            graph.outputs = [produced[n] for n in names if n in produced]
            for tensor in graph.outputs:
                if tensor.dtype is None:
                    tensor.dtype = np.float32
            for tensor in boundary:
                tensor.inputs.clear()  # the prefix's producers are gone from this graph
            self._sessions[key] = (session(to_model(graph, self.meta)), [t.name for t in graph.outputs])
        return self._sessions[key]
