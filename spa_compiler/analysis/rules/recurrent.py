"""Recurrent layers (LSTM, GRU, RNN and onnxruntime's DynamicQuantizeLSTM): hidden units as atoms.

A recurrent node is a boundary between its input features (``X``'s last
axis, read by ``W``'s input columns) and its hidden units.  One hidden space
ties ``Y``'s, ``Y_h``'s and ``Y_c``'s last axes, the initial states, and the
recurrence itself: ``R``'s input columns read the hidden units (a consumer
slice, so the oracle's masking cuts a removed unit out of every other unit's
gates), while the gate blocks of ``W``, ``R``, ``B`` and the peepholes ``P``
produce them.  Gate axes hold ``G`` blocks of ``hidden`` rows (LSTM iofc,
GRU zrh, RNN one), so they are spaces of their own on the weight tensor,
tied to the hidden space by a block map (unit ``c`` owns rows ``g*hidden+c``).

Layouts: hidden units and input features are the last axis of every tensor in both layouts
(batch-first ``layout=1`` only moves batch and time), so one rule serves both.

Directions: ``Y`` is ``[seq, num_directions, batch, hidden]`` and the same
unit index serves both directions, so one hidden unit of a bidirectional
node is removed in both directions at once (the node keeps one
``hidden_size``); the Transpose/Reshape that concatenates directions maps
through the reshape rule.

DynamicQuantizeLSTM stores ``W`` as ``[dirs, input, 4*hidden]`` and ``R`` as
``[dirs, hidden, 4*hidden]`` (transposed against ONNX's LSTM) with per-tensor
(``[dirs]``) or per-channel (``[dirs, 4*hidden]``) scales and zero points,
and quantizes ``X`` and ``h`` per tensor at run time: removing a unit or an
input feature can move those ranges, so its groups are inexact.

OBSPA compensates DynamicQuantizeLSTM's input weights ``W``: its statistics
are those of the float ``X`` it quantizes, the weight seen as a
``(dirs*4*hidden) x input`` matrix of dequantized values (per-direction or
per-channel scales and zero points applied), and compensated weights go back
on the integer grid with the same scale and zero point.  The recurrent
weights ``R`` read the hidden states, which the node outputs as ``Y``: R's
statistics are those of ``Y`` (the states it reads one step later), so a
unit's cost weighs its recurrent weights by how large and how correlated the
states really are, not by their norm alone (identity statistics: on the int8
diacritizers magnitude-like R costs made the hidden-unit ranking worse than
plain magnitude).  Compensating R this way is first order (the kept states
move a little too); the guard keeps it never worse than plain removal on
those statistics.  Float LSTM/GRU/RNN layers are left to magnitude.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from ...ir import attr, const_shape, input_at
from ..effects import CONSUMER, NEUTRAL, PASSIVE, PRODUCER, Effect, Space, Tie, frozen
from ..maps import Block, identity
from .base import Rule, param, space_of

# input positions shared by LSTM, GRU, RNN and DynamicQuantizeLSTM
X, W, R, B, SEQUENCE_LENS, INITIAL_H, INITIAL_C, PEEPHOLES = range(8)
QUANT_PARAMS = (8, 9, 10, 11)  # DynamicQuantizeLSTM: W_scale, W_zero_point, R_scale, R_zero_point


@dataclass(frozen=True)
class Cell:
    """Where one recurrent op keeps what: gate count and the axes of W and R."""

    gates: int                 # gate blocks per hidden unit (LSTM 4, GRU 3, RNN 1)
    w_gate_axis: int = 1       # W: [dirs, gates*hidden, input] in ONNX
    w_input_axis: int = 2
    r_gate_axis: int = 1       # R: [dirs, gates*hidden, hidden] in ONNX
    r_hidden_axis: int = 2
    states: tuple[int, ...] = (INITIAL_H,)
    peepholes: bool = False
    quantized: bool = False    # X and h quantized per tensor at run time (DynamicQuantizeLSTM)


def _present(tensor: Optional[gs.Tensor]) -> bool:
    return tensor is not None and (isinstance(tensor, gs.Constant) or tensor.name != "")


class Recurrent(Rule):
    """LSTM / GRU / RNN / DynamicQuantizeLSTM: a boundary from input features to hidden units."""

    def __init__(self, cell: Cell):
        self.cell = cell

    def _outputs(self, node: gs.Node) -> list[gs.Tensor]:
        return [t for t in node.outputs if _present(t)]

    def _hidden_space(self, node: gs.Node, cx) -> Optional[Space]:
        for tensor in self._outputs(node):
            rank = cx.rank(tensor)
            if rank is not None:
                return space_of(tensor, rank - 1)
        return None

    def _weights_constant(self, node: gs.Node) -> Optional[str]:
        for index, name in ((W, "W"), (R, "R"), (B, "B"), (PEEPHOLES, "P")):
            tensor = input_at(node, index)
            if index in (W, R) and tensor is None:
                return f"{name} is missing"
            if tensor is not None and const_shape(tensor) is None:
                return f"{name} is computed at run time"
        return None

    def seeds(self, node, cx):
        if self._weights_constant(node) is not None:
            return []
        space = self._hidden_space(node, cx)
        return [space] if space is not None else []

    def analyze(self, node, port, axis, cx):
        problem = self._weights_constant(node)
        if problem:
            return frozen(f"{node.name} ({node.op}) {problem}")
        if port[0] == "in" and port[1] == X:
            if axis != (cx.rank(node.inputs[X]) or 0) - 1:
                return frozen(f"{node.name} ({node.op}) mixes time steps and batch rows (axis {axis})")
            effect = Effect(params=[param(node, W, self.cell.w_input_axis, CONSUMER, space_of(node.inputs[X], axis))])
            if self.cell.quantized:
                effect.inexact = f"{node.name} ({node.op}) quantizes its input per tensor at run time"
            return effect
        if port[0] == "in" and port[1] not in self.cell.states:
            if isinstance(node.inputs[port[1]], gs.Constant):
                return NEUTRAL  # a gate axis of W, R, B or P, declared with the hidden space
            return frozen(f"{node.name} ({node.op}) input {port[1]} (sequence lengths) reached")
        tensor = node.inputs[port[1]] if port[0] == "in" else node.outputs[port[1]]
        if axis != (cx.rank(tensor) or 0) - 1:
            return frozen(f"{node.name} ({node.op}) time, direction or batch axis {axis} of {tensor.name}")
        return self._hidden(node, cx)

    def _hidden(self, node: gs.Node, cx) -> Effect:
        """Everything tied to the hidden units: outputs, states, gate blocks, recurrence."""
        cell = self.cell
        anchor = self._hidden_space(node, cx)
        hidden = int(attr(node, "hidden_size", 0)) or (cx.dim(node.outputs[0], anchor[1]) if anchor else None)
        if anchor is None or not hidden:
            return frozen(f"{node.name} ({node.op}) hidden size unknown")
        if any(cx.rank(t) is None for t in self._outputs(node)):
            return frozen(f"{node.name} ({node.op}) output ranks unknown")
        effect = Effect()
        for tensor in self._outputs(node):
            space = space_of(tensor, (cx.rank(tensor) or 0) - 1)
            if space != anchor:
                effect.ties.append(Tie(anchor, space, identity(hidden)))
        for index in cell.states:
            state = input_at(node, index)
            if state is None:
                continue
            if isinstance(state, gs.Constant):
                effect.params.append(param(node, index, len(state.shape) - 1, PASSIVE, anchor))
            else:
                effect.ties.append(Tie(anchor, space_of(state, (cx.rank(state) or 3) - 1), identity(hidden)))
        w = node.inputs[W]
        gate_space = space_of(w, cell.w_gate_axis)
        effect.ties.append(Tie(anchor, gate_space, Block(hidden, cell.gates * hidden, outer=cell.gates)))
        effect.params += [param(node, W, cell.w_gate_axis, PRODUCER, gate_space),
                          param(node, R, cell.r_gate_axis, PRODUCER, gate_space),
                          param(node, R, cell.r_hidden_axis, CONSUMER, anchor)]
        self._blocks(node, effect, anchor, hidden, B, 2 * cell.gates)
        if cell.peepholes:
            self._blocks(node, effect, anchor, hidden, PEEPHOLES, 3)
        if cell.quantized:
            for index in QUANT_PARAMS:
                scale = input_at(node, index)
                if scale is not None and len(scale.shape) == 2:  # per channel: [dirs, gates*hidden]
                    effect.params.append(param(node, index, 1, PRODUCER, gate_space))
            effect.inexact = f"{node.name} ({node.op}) quantizes the hidden state per tensor at run time"
        return effect

    def _blocks(self, node: gs.Node, effect: Effect, anchor: Space, hidden: int, index: int, blocks: int) -> None:
        """A ``[dirs, blocks*hidden]`` parameter (bias, peepholes): its own space, tied block-wise."""
        tensor = input_at(node, index)
        if tensor is None:
            return
        space = space_of(tensor, 1)
        effect.ties.append(Tie(anchor, space, Block(hidden, blocks * hidden, outer=blocks)))
        effect.params.append(param(node, index, 1, PRODUCER, space))

    # OBSPA on DynamicQuantizeLSTM's input weights W (see the module docstring)
    def is_consumer_layer(self, node):
        return self.cell.quantized and isinstance(node.inputs[W], gs.Constant) and all(
            isinstance(input_at(node, i), gs.Constant) for i in QUANT_PARAMS[:2])

    def statistics_input(self, node):
        return node.inputs[X]

    def feature_rows(self, node, x, count=None, rng=None):
        return x.reshape(-1, x.shape[-1])

    def columns_per_channel(self, node):
        return None

    def bias_input(self, node):
        """B: the removed inputs' (or states') mean contribution to the gates goes into its input-gate half."""
        bias = input_at(node, B)
        return B if isinstance(bias, gs.Constant) else None

    def folded_bias(self, node, bias, shift):
        """B is ``[dirs, 2*gates*hidden]`` (W's gate biases, then R's); *shift* has ``dirs*gates*hidden`` rows."""
        dirs, width = bias.shape if bias.ndim == 2 else (0, 0)
        if not dirs or shift.size * 2 != bias.size:
            return None
        out = bias.copy()
        out[:, :width // 2] += shift.reshape(dirs, width // 2)
        return out

    def measures(self, node, param):
        """Statistics (of X) are W's; R's consumer slice has its own (:meth:`recurrence_input`)."""
        return param.input_index == W

    def recurrence_input(self, node) -> Optional[gs.Tensor]:
        """What R reads, as the node outputs it: ``Y`` holds every hidden state ``h_t``, and R reads
        ``h_{t-1}``, the same states one step earlier (directions pooled: one unit serves both)."""
        y = node.outputs[0] if node.outputs else None
        return y if self.is_consumer_layer(node) and y is not None and y.name else None

    def _quantization(self, node, index: int) -> tuple[np.ndarray, np.ndarray]:
        """W's (or R's) scale and zero point as ``[dirs, 1, gates*hidden or 1]`` (per tensor or per channel)."""
        dirs = node.inputs[index].shape[0]
        first = QUANT_PARAMS[0] if index == W else QUANT_PARAMS[2]
        scale, zero = (np.asarray(input_at(node, i).values, dtype=np.float64).reshape(dirs, 1, -1)
                       for i in (first, first + 1))
        return scale, zero

    def consumer_matrix(self, node, param, values):
        """W or R (``[dirs, input or hidden, gates*hidden]``) as a dequantized ``(dirs*gates*hidden) x input`` matrix.

        R is scored with identity statistics (its normalized magnitude: the recurrence reads hidden
        units too) so that a unit's cost counts every reader; with identity statistics its
        compensation is plain removal.
        """
        if not self.is_consumer_layer(node) or param.input_index not in (W, R) or values.ndim != 3 \
                or not all(isinstance(input_at(node, i), gs.Constant) for i in QUANT_PARAMS):
            return None
        scale, zero = self._quantization(node, param.input_index)
        w = (np.asarray(values, dtype=np.float64) - zero) * scale  # [dirs, input, gates*hidden]
        return w.transpose(0, 2, 1).reshape(-1, values.shape[1]), 1

    def _grid(self, node, param, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """*w* ((dirs*gates*hidden) x input) as integers in zero-point space, with scale and zero point."""
        from .quantized import requantize

        scale, zero = self._quantization(node, param.input_index)
        tensor = node.inputs[param.input_index]
        layout = w.reshape(tensor.shape[0], -1, w.shape[1]).transpose(0, 2, 1)  # [dirs, input, gates*hidden]
        return requantize(layout / scale, zero, tensor.values.dtype), scale, zero

    def representable(self, node, param, w):
        q, scale, _ = self._grid(node, param, w)
        return (q * scale).transpose(0, 2, 1).reshape(w.shape)

    def weight_values(self, node, param, w, shape):
        q, _, zero = self._grid(node, param, w)
        return np.rint(q + zero).reshape(shape).astype(node.inputs[param.input_index].values.dtype)

    def rewrite(self, node, rx):
        for tensor in self._outputs(node):
            kept = rx.kept(tensor, len(tensor.shape) - 1) if tensor.shape is not None else None
            if kept is not None:
                node.attrs["hidden_size"] = int(len(kept))
                return


LSTM = Cell(gates=4, states=(INITIAL_H, INITIAL_C), peepholes=True)
GRU = Cell(gates=3)
RNN = Cell(gates=1)
DYNAMIC_QUANTIZE_LSTM = Cell(gates=4, w_gate_axis=2, w_input_axis=1, r_gate_axis=2, r_hidden_axis=1,
                             states=(INITIAL_H, INITIAL_C), peepholes=True, quantized=True)

RECURRENT_RULES = {"LSTM": Recurrent(LSTM), "GRU": Recurrent(GRU), "RNN": Recurrent(RNN)}
MICROSOFT_RULES = {"DynamicQuantizeLSTM": Recurrent(DYNAMIC_QUANTIZE_LSTM)}
