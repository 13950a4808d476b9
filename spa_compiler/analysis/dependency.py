"""Dependency analysis: channel spaces, their ties, and the groups they form.

An analysis pass in the LLVM sense: it reads the normalized graph and computes
facts (groups, atoms, frozen reasons) without changing anything.  Spaces are
discovered by propagation from the output channels of every boundary op,
asking each neighbouring node's rule how the space flows through it; ties
become edges of a networkx graph whose connected components are the
dependency groups.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import onnx_graphsurgeon as gs

from ..ir import all_nodes, all_tensors, node_label
from .atoms import compute_atoms
from .context import AnalysisContext, AnalysisFacts
from .effects import CONSUMER, PRODUCER, Effect, ParamSlice, Space, Tie
from .rules import rule_for
from .rules.base import Port
from .rules.control_flow import body_ports
from .rules.quantized import through_dequantize


@dataclass
class Group:
    """A set of channel spaces whose positions must be removed together, atom by atom."""

    id: int
    spaces: list[Space]
    sizes: dict[Space, int]
    ties: list[Tie]
    params: list[ParamSlice]
    frozen: list[str] = field(default_factory=list)
    inexact: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)
    atom_of: dict[Space, np.ndarray] = field(default_factory=dict)
    n_atoms: int = 0

    @property
    def prunable(self) -> bool:
        return not self.frozen and self.n_atoms >= 2

    @property
    def exact(self) -> bool:
        return not self.inexact

    def params_by_role(self, role: str) -> list[ParamSlice]:
        return [p for p in self.params if p.role == role]

    @property
    def width(self) -> int:
        """Channels of the widest producer space (what a user calls the layer's width)."""
        producer_spaces = {p.space for p in self.params_by_role(PRODUCER)} or set(self.spaces)
        return max(self.sizes[s] for s in producer_spaces)

    def describe(self) -> str:
        producers = sorted({p.node for p in self.params_by_role(PRODUCER)})
        head = ", ".join(producers[:3]) + (f" +{len(producers) - 3}" if len(producers) > 3 else "")
        return head or self.spaces[0][0]


@dataclass
class DependencyAnalysis:
    groups: list[Group]
    group_of: dict[Space, int]
    facts: AnalysisFacts

    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]


def _body_owners(graph: gs.Graph) -> dict[str, list[tuple[gs.Node, Port]]]:
    """Each subgraph input and output, with the node owning the subgraph and the port its rule answers on."""
    owners: dict[str, list[tuple[gs.Node, Port]]] = {}
    for node in all_nodes(graph):
        for tensor, port in body_ports(node):
            owners.setdefault(tensor.name, []).append((node, port))
    return owners


def analyze(graph: gs.Graph, opset: int, prune_hidden: bool = False, head_dims: bool = False) -> DependencyAnalysis:
    """Discover channel spaces and group them; compute each group's atoms.

    With *prune_hidden*, normalizations over a channel axis (LayerNorm, RMSNorm,
    their decomposed ReduceMean forms) tie it instead of freezing it, marking
    the group inexact: the residual stream of a transformer becomes prunable.
    With *head_dims*, attention projections are pruned by head dimension (the
    same dims in every head) instead of by whole heads.
    """
    cx = AnalysisContext(graph=graph, opset=opset, facts=AnalysisFacts(opset=opset), prune_hidden=prune_hidden,
                         head_dims=head_dims)
    tensors = all_tensors(graph)  # subgraph bodies are analysed like the graph (rules/control_flow.py)
    graph_inputs = {t.name for t in graph.inputs}
    graph_outputs = {t.name for t in graph.outputs}
    owners = _body_owners(graph)
    nodes = all_nodes(graph)
    analysed = {id(node) for node in nodes}

    space_graph = nx.Graph()
    sizes: dict[Space, int] = {}
    reasons: dict[Space, list[str]] = {}
    inexact: dict[Space, list[str]] = {}
    params: dict[Space, list[ParamSlice]] = {}
    touching: dict[Space, set[str]] = {}
    ties: list[Tie] = []
    visited: set[tuple[int, Space]] = set()
    queue: deque[Space] = deque()

    def add_space(space: Space) -> None:
        if space in sizes:
            return
        tensor = tensors.get(space[0])
        dim = cx.dim(tensor, space[1]) if tensor is not None else None
        sizes[space] = dim if dim is not None else 0
        space_graph.add_node(space)
        if dim is None:
            reasons.setdefault(space, []).append(f"tensor {space[0]} axis {space[1]} has unknown size")
        queue.append(space)

    def apply(node: gs.Node, space: Space, effect: Effect) -> None:
        touching.setdefault(space, set()).add(node.name)
        if effect.freeze:
            reasons.setdefault(space, []).append(effect.freeze)
        if effect.inexact:
            inexact.setdefault(space, []).append(effect.inexact)
        for p in (q for p in effect.params for q in through_dequantize(p, tensors)):
            add_space(p.space)
            params.setdefault(p.space, []).append(p)
        node_tensors = ({t.name for t in node.inputs if t is not None} | {t.name for t in node.outputs}
                        | {t.name for t, _ in body_ports(node)})
        for tie in effect.ties:
            for end in (tie.a, tie.b):
                add_space(end)
                if end[0] in node_tensors:
                    visited.add((id(node), end))
                touching.setdefault(end, set()).add(node.name)
            space_graph.add_edge(tie.a, tie.b)
            ties.append(tie)

    def visit(node: gs.Node, space: Space, port: tuple[str, int]) -> None:
        key = (id(node), space)
        if key in visited:
            return
        visited.add(key)
        rule = rule_for(node)
        if rule is None:
            apply(node, space, Effect(freeze=f"{node_label(node)}: no rule for op {node.op}"
                                           + (f" (domain {node.domain})" if node.domain else "")))
            return
        try:
            effect = rule.analyze(node, port, space[1], cx)
        except Exception as exc:  # noqa: BLE001 - a rule bug must freeze, not crash
            effect = Effect(freeze=f"{node_label(node)}: rule failed ({type(exc).__name__}: {exc})")
        apply(node, space, effect)

    for node in nodes:
        rule = rule_for(node)
        if rule is None:
            continue
        try:
            seeds = rule.seeds(node, cx)
        except Exception:  # noqa: BLE001
            seeds = []
        for space in seeds:
            add_space(space)
            visited.add((id(node), space))
            visit_effect = rule.analyze(node, ("out", 0), space[1], cx)
            apply(node, space, visit_effect)

    while queue:
        space = queue.popleft()
        name, axis = space
        tensor = tensors.get(name)
        if tensor is None:
            reasons.setdefault(space, []).append(f"tensor {name} not found")
            continue
        if name in graph_outputs:
            reasons.setdefault(space, []).append(f"reaches graph output {name}")
        if name in graph_inputs:
            reasons.setdefault(space, []).append(f"reaches graph input {name}")
        for owner, port in owners.get(name, []):  # a body's input or output: its node's rule couples it
            visit(owner, space, port)
        for producer in tensor.inputs:
            if id(producer) not in analysed:
                reasons.setdefault(space, []).append(f"tensor {name} comes from a node outside the graph")
                continue
            visit(producer, space, ("out", producer.outputs.index(tensor)))
        for consumer in tensor.outputs:
            if id(consumer) not in analysed:
                reasons.setdefault(space, []).append(f"tensor {name} is read by a node outside the graph")
                continue
            for i, inp in enumerate(consumer.inputs):
                if inp is tensor:
                    visit(consumer, space, ("in", i))

    groups = _make_groups(space_graph, sizes, ties, params, reasons, inexact, touching)
    group_of = {space: g.id for g in groups for space in g.spaces}
    for group in groups:
        compute_atoms(group)
    return DependencyAnalysis(groups=groups, group_of=group_of, facts=cx.facts)


def _make_groups(space_graph, sizes, ties, params, reasons, inexact, touching) -> list[Group]:
    component_of: dict[Space, int] = {}
    components = sorted((sorted(c) for c in nx.connected_components(space_graph)), key=lambda c: c[0])
    for index, comp in enumerate(components):
        for space in comp:
            component_of[space] = index
    tie_lists: list[list[Tie]] = [[] for _ in components]
    for tie in ties:
        tie_lists[component_of[tie.a]].append(tie)
    groups = []
    for index, comp in enumerate(components):
        seen: set[tuple[str, int]] = set()
        group_params = []
        for space in comp:
            for p in params.get(space, []):
                if (p.tensor, p.axis) not in seen:
                    seen.add((p.tensor, p.axis))
                    group_params.append(p)
        group = Group(
            id=index, spaces=comp, sizes={s: sizes[s] for s in comp}, ties=tie_lists[index],
            params=group_params,
            frozen=sorted({r for s in comp for r in reasons.get(s, [])}),
            inexact=sorted({r for s in comp for r in inexact.get(s, [])}),
            nodes=sorted({n for s in comp for n in touching.get(s, set())}),
        )
        _check_consistency(group)
        groups.append(group)
    return groups


def _check_consistency(group: Group) -> None:
    """Freeze groups whose maps or parameters disagree with the space sizes (never rewrite on a guess)."""
    for tie in group.ties:
        if tie.map.src != group.sizes[tie.a] or tie.map.dst != group.sizes[tie.b]:
            group.frozen.append(f"index map {tie.a}->{tie.b} does not match sizes")
            return
    if not group.params_by_role(PRODUCER) and not group.frozen:
        group.frozen.append("no producer parameters (channels come from no prunable layer)")
    if not group.params_by_role(CONSUMER) and not group.frozen and not group.inexact:
        # (an inexact group may end in a contraction, such as Q.K^T over head dims)
        group.frozen.append("no consumer layer reads these channels")

