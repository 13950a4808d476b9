"""Recurrent cells that exporters unrolled into per-step MatMul/Add/Sigmoid/Tanh/Mul graphs.

What torch.onnx writes for an ``nn.LSTMCell``/``nn.GRUCell`` called in a Python loop, and Keras/tf2onnx
for an unrolled ``LSTM``: one ``[input, 4*hidden]`` MatMul for the input, one ``[hidden, 4*hidden]`` for
the state (weights shared by every step), the gate pre-activations cut into blocks of ``hidden`` by a
``Split`` (torch) or one ``Slice`` per gate (Keras), then the cell arithmetic.  Hidden units must
stay whole: unit ``c`` owns column ``g*hidden + c`` of every gate block.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .sequence import Seq

STEPS, BATCH = 3, 2


def _steps(s: Seq, x: str) -> list[str]:
    """x [batch, steps, features] -> one [batch, features] tensor per step (Gather on axis 1)."""
    return [s.one("Gather", [x, s.init("t", np.array(t, np.int64))], axis=1) for t in range(STEPS)]


def _gate_blocks(s: Seq, gates: str, hidden: int, n: int, slices: bool) -> list[str]:
    if not slices:
        return s.node("Split", [gates, s.init("sizes", np.array([hidden] * n, np.int64))], n_out=n, axis=-1)
    return [s.one("Slice", [gates, s.init("st", np.array([k * hidden], np.int64)),
                            s.init("en", np.array([(k + 1) * hidden], np.int64)), s.init("ax", np.array([-1], np.int64))])
            for k in range(n)]


def _stack(s: Seq, hs: list[str]) -> str:
    axis = s.init("ax", np.array([1], np.int64))
    return s.one("Concat", [s.one("Unsqueeze", [h, axis]) for h in hs], axis=1)


def unrolled_lstm(slices: bool = False, hidden: int = 5, features: int = 4) -> onnx.ModelProto:
    """Linear -> LSTM cell unrolled over STEPS (gates i, f, g, o) -> per-step hidden states -> linear."""
    s = Seq("unrolled_lstm_slices" if slices else "unrolled_lstm")
    s.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, STEPS, 3])]
    feats = s.one("Relu", [s.linear("x", 3, features)])
    w, r = s.weight("W", (features, 4 * hidden)), s.weight("R", (hidden, 4 * hidden))
    b = s.weight("B", (4 * hidden,), 0.1)
    h = s.init("h0", s.rng.normal(0, 0.5, (BATCH, hidden)).astype(np.float32))
    c = s.init("c0", s.rng.normal(0, 0.5, (BATCH, hidden)).astype(np.float32))
    outs = []
    for x_t in _steps(s, feats):
        gates = s.one("Add", [s.one("Add", [s.one("MatMul", [x_t, w]), s.one("MatMul", [h, r])]), b])
        i, f, g, o = _gate_blocks(s, gates, hidden, 4, slices)
        i, f, o, g = (s.one("Sigmoid", [i]), s.one("Sigmoid", [f]), s.one("Sigmoid", [o]), s.one("Tanh", [g]))
        c = s.one("Add", [s.one("Mul", [f, c]), s.one("Mul", [i, g])])
        h = s.one("Mul", [o, s.one("Tanh", [c])])
        outs.append(h)
    return s.model([s.linear(_stack(s, outs), hidden, 3)])


def unrolled_gru(hidden: int = 5, features: int = 4) -> onnx.ModelProto:
    """A GRU cell unrolled over STEPS as torch writes it: the input and state projections split into
    r, z, n blocks separately (n = tanh(x_n + r * h_n)), h' = (1 - z) * n + z * h."""
    s = Seq("unrolled_gru")
    s.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [BATCH, STEPS, 3])]
    feats = s.one("Relu", [s.linear("x", 3, features)])
    w, r = s.weight("W", (features, 3 * hidden)), s.weight("R", (hidden, 3 * hidden))
    bw, br = s.weight("BW", (3 * hidden,), 0.1), s.weight("BR", (3 * hidden,), 0.1)
    h = s.init("h0", s.rng.normal(0, 0.5, (BATCH, hidden)).astype(np.float32))
    one = s.init("one", np.array(1.0, np.float32))
    outs = []
    for x_t in _steps(s, feats):
        xr, xz, xn = _gate_blocks(s, s.one("Add", [s.one("MatMul", [x_t, w]), bw]), hidden, 3, False)
        hr, hz, hn = _gate_blocks(s, s.one("Add", [s.one("MatMul", [h, r]), br]), hidden, 3, False)
        rg, z = s.one("Sigmoid", [s.one("Add", [xr, hr])]), s.one("Sigmoid", [s.one("Add", [xz, hz])])
        n = s.one("Tanh", [s.one("Add", [xn, s.one("Mul", [rg, hn])])])
        h = s.one("Add", [s.one("Mul", [s.one("Sub", [one, z]), n]), s.one("Mul", [z, h])])
        outs.append(h)
    return s.model([s.linear(_stack(s, outs), hidden, 3)])


UNROLLED_MODELS = {"unrolled_lstm": unrolled_lstm, "unrolled_lstm_slices": lambda: unrolled_lstm(slices=True),
                   "unrolled_gru": unrolled_gru}
