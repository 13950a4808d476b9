"""Control flow (If, Loop, Scan): channels cross subgraph boundaries.

The layers inside a body are analysed like the graph's own (the analysis
walks every subgraph, and an outer tensor a body reads is read by that body's
nodes), so a Conv inside an ``If`` branch is a boundary like any other.
What these rules add is the coupling at the boundary: each *coupling* is a
list of tensors whose channels are the same positions:

- ``If``: output ``k`` and output ``k`` of both branches (every branch must
  produce the same channels, so one cut hits them all; branches that
  disagree on a size freeze the output's group);
- ``Loop``: a loop-carried value's initial input, body input, body output
  and final output; a scan output of the body and the stacked output, whose
  axis 0 is the iteration axis;
- ``Scan`` (opset 9+): the same for states; a scan input and the body's
  per-step slice (the scan axis removed), a body scan output and the stacked
  output (the scan axis inserted).

The iteration/scan axis itself, trip counts and conditions are never
channels: a space there freezes.  The body's declared input and output
shapes are rewritten with the kept channel counts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Union

import onnx_graphsurgeon as gs

from ...ir import attr, node_label
from ..effects import PASSIVE, Effect, ParamSlice, Tie, frozen
from ..maps import identity
from .base import Port, Rule, space_of


@dataclass(frozen=True)
class Member:
    """One tensor of a coupling; ``stacked`` is the position of the iteration axis it has and the body's lacks."""

    tensor: gs.Tensor
    port: Port
    stacked: Optional[int] = None

    def to_body_axis(self, axis: int) -> Optional[int]:
        if self.stacked is None:
            return axis
        return None if axis == self.stacked else (axis if axis < self.stacked else axis - 1)

    def from_body_axis(self, axis: int) -> int:
        return axis if self.stacked is None or axis < self.stacked else axis + 1


def body_ports(node: gs.Node) -> Iterator[tuple[gs.Tensor, Port]]:
    """Every input and output of *node*'s subgraphs, with the port its rule answers on (``then_branch:out``)."""
    for name, value in node.attrs.items():
        if isinstance(value, gs.Graph):
            for k, tensor in enumerate(value.inputs):
                yield tensor, (f"{name}:in", k)
            for k, tensor in enumerate(value.outputs):
                yield tensor, (f"{name}:out", k)


def _axis(value: int, rank: Optional[int]) -> Optional[int]:
    if value >= 0:
        return value
    return None if rank is None else value + rank


class ControlFlow(Rule):
    """Shared analysis and rewrite; subclasses list their couplings."""

    def couplings(self, node: gs.Node, cx) -> Union[list[list[Member]], str]:
        """The coupled tensors, or why the node's structure cannot be read (it freezes)."""
        raise NotImplementedError

    def analyze(self, node, port, axis, cx):
        couplings = self.couplings(node, cx)
        if isinstance(couplings, str):
            return frozen(f"{node_label(node)}: {couplings}")
        asked = next(((c, m) for c in couplings for m in c if m.port == port), None)
        if asked is None:
            return frozen(f"{node_label(node)}: {port[0]} {port[1]} is a trip count, condition or iteration "
                          "index, not channels")
        coupling, member = asked
        body_axis = member.to_body_axis(axis)
        if body_axis is None:
            return frozen(f"{node_label(node)}: axis {axis} of {member.tensor.name} is the iteration axis")
        size = cx.dim(member.tensor, axis)
        effect = Effect()
        for other in coupling:
            other_axis = other.from_body_axis(body_axis)
            other_size = cx.dim(other.tensor, other_axis)
            if size is None or other_size != size:
                return frozen(f"{node_label(node)}: {member.tensor.name} axis {axis} and {other.tensor.name} "
                              f"axis {other_axis} differ in size ({size} vs {other_size}): the subgraphs "
                              "disagree on these channels")
            space = space_of(other.tensor, other_axis)
            if other is not member:
                effect.ties.append(Tie(space_of(member.tensor, axis), space, identity(size)))
            if isinstance(other.tensor, gs.Constant):
                if other.port[0] != "in":
                    return frozen(f"{node_label(node)}: a subgraph returns the constant {other.tensor.name}")
                effect.params.append(ParamSlice(space=space, tensor=other.tensor.name, axis=other_axis,
                                                role=PASSIVE, node=node.name, op=node.op, input_index=other.port[1]))
        return effect

    def rewrite(self, node, rx):
        """Body inputs and outputs declare their shapes: give them the kept channel counts."""
        for tensor, _ in body_ports(node):
            if isinstance(tensor, gs.Constant) or tensor.shape is None:
                continue
            dims = list(tensor.shape)
            for axis in range(len(dims)):
                dims[axis] = rx.new_dim(tensor, axis, dims[axis])
            tensor.shape = dims


class If(ControlFlow):
    def couplings(self, node, cx):
        branches = [node.attrs.get("then_branch"), node.attrs.get("else_branch")]
        if not all(isinstance(b, gs.Graph) for b in branches):
            return "missing branch"
        if any(len(b.outputs) != len(node.outputs) for b in branches):
            return "branches and node differ in output count"
        return [[Member(out, ("out", k)), *(Member(b.outputs[k], (f"{n}:out", k))
                                            for b, n in zip(branches, ("then_branch", "else_branch")))]
                for k, out in enumerate(node.outputs)]


class Loop(ControlFlow):
    """Inputs ``M, cond, v...``; body inputs ``iter, cond, v...``; body outputs ``cond, v..., scans...``."""

    def couplings(self, node, cx):
        body = node.attrs.get("body")
        if not isinstance(body, gs.Graph):
            return "missing body"
        carried = len(node.inputs) - 2
        scans = len(body.outputs) - 1 - carried
        if carried < 0 or scans < 0 or len(body.inputs) != carried + 2 or len(node.outputs) != carried + scans:
            return "body and node disagree on loop-carried values"
        couplings = [[Member(node.inputs[2 + j], ("in", 2 + j)), Member(body.inputs[2 + j], ("body:in", 2 + j)),
                      Member(body.outputs[1 + j], ("body:out", 1 + j)), Member(node.outputs[j], ("out", j))]
                     for j in range(carried)]
        couplings += [[Member(body.outputs[1 + carried + k], ("body:out", 1 + carried + k)),
                       Member(node.outputs[carried + k], ("out", carried + k), stacked=0)] for k in range(scans)]
        return couplings


class Scan(ControlFlow):
    """Inputs ``states..., scans...``; body inputs the states and one slice per scan input; body outputs
    and node outputs the states, then the scan outputs."""

    def couplings(self, node, cx):
        body = node.attrs.get("body")
        if not isinstance(body, gs.Graph):
            return "missing body"
        if cx.opset < 9:
            return "Scan before opset 9 (batch axis and sequence_lens)"
        n_scan_in = int(attr(node, "num_scan_inputs", 0))
        states = len(node.inputs) - n_scan_in
        n_scan_out = len(node.outputs) - states
        if states < 0 or n_scan_out < 0 or len(body.inputs) != len(node.inputs) \
                or len(body.outputs) != len(node.outputs):
            return "body and node disagree on states and scan values"
        in_axes = list(attr(node, "scan_input_axes", None) or [0] * n_scan_in)
        out_axes = list(attr(node, "scan_output_axes", None) or [0] * n_scan_out)
        couplings = [[Member(node.inputs[j], ("in", j)), Member(body.inputs[j], ("body:in", j)),
                      Member(body.outputs[j], ("body:out", j)), Member(node.outputs[j], ("out", j))]
                     for j in range(states)]
        for m in range(n_scan_in):
            outer = node.inputs[states + m]
            stacked = _axis(int(in_axes[m]), cx.rank(outer))
            if stacked is None:
                return f"scan axis of {outer.name} unknown"
            couplings.append([Member(outer, ("in", states + m), stacked),
                              Member(body.inputs[states + m], ("body:in", states + m))])
        for k in range(n_scan_out):
            inner = body.outputs[states + k]
            rank = cx.rank(inner)
            stacked = _axis(int(out_axes[k]), None if rank is None else rank + 1)
            if stacked is None:
                return f"scan axis of {node.outputs[states + k].name} unknown"
            couplings.append([Member(inner, ("body:out", states + k)),
                              Member(node.outputs[states + k], ("out", states + k), stacked)])
        return couplings


CONTROL_FLOW_RULES = {"If": If(), "Loop": Loop(), "Scan": Scan()}
