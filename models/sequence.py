"""Small recurrent and quantized ONNX graphs built with onnx.helper, for the rule oracle tests.

Recurrent graphs are exact under the mask oracle; the quantized ones (made
from a float tagger by onnxruntime's ``quantize_dynamic``, which writes what
real int8 exports hold: ``DynamicQuantizeLSTM``, ``MatMulInteger`` after
``DynamicQuantizeLinear``, an embedding ``Gather`` of a uint8 table and a
``DequantizeLinear``) are inexact by construction and tested separately.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .builders import Net


class Seq:
    """A tiny sequence-model builder: tensors are named, weights seeded."""

    def __init__(self, name: str, seed: int = 0, opset: int = 17):
        self.name, self.opset = name, opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self._k = 0

    def fresh(self, base: str) -> str:
        self._k += 1
        return f"{base}{self._k}"

    def init(self, base: str, values: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    def weight(self, base: str, shape, scale: float = 0.4) -> str:
        return self.init(base, self.rng.normal(0, scale, shape).astype(np.float32))

    def node(self, op: str, inputs, n_out: int = 1, domain: str = "", **attrs) -> list[str]:
        name = self.fresh(op.lower())
        outs = [f"{name}_out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=name, domain=domain, **attrs))
        return outs

    def one(self, op: str, inputs, **attrs) -> str:
        return self.node(op, inputs, **attrs)[0]

    def linear(self, x: str, cin: int, cout: int) -> str:
        y = self.one("MatMul", [x, self.weight("w", (cin, cout))])
        return self.one("Add", [y, self.weight("b", (cout,), 0.1)])

    def recurrent(self, op: str, x: str, cin: int, hidden: int, dirs: int = 1, states: tuple = (),
                  peepholes: bool = False, **attrs) -> list[str]:
        """An ONNX LSTM/GRU/RNN with random W, R, B; *states* are initializers given as arrays."""
        gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
        inputs = [x, self.weight("W", (dirs, gates * hidden, cin)), self.weight("R", (dirs, gates * hidden, hidden)),
                  self.weight("B", (dirs, 2 * gates * hidden), 0.1), ""]
        inputs += [self.init("state", s.astype(np.float32)) for s in states]
        if peepholes:
            inputs += [""] * (7 - len(inputs)) + [self.weight("P", (dirs, 3 * hidden), 0.2)]
        direction = "bidirectional" if dirs == 2 else "forward"
        n_out = 3 if op == "LSTM" else 2
        return self.node(op, inputs, n_out=n_out, hidden_size=hidden, direction=direction, **attrs)

    def zero_states(self, like: str, layers: int, dirs: int, hidden: int) -> list[str]:
        """Zero initial states as PyTorch exports them: one ConstantOfShape([layers*dirs, batch, hidden])
        sliced per layer (and read as both h and c)."""
        batch = self.one("Gather", [self.one("Shape", [like]), self.init("one", np.array(1, np.int64))], axis=0)
        shape = self.one("Concat", [self.init("layers", np.array([layers * dirs], np.int64)),
                                    self.one("Unsqueeze", [batch, self.init("ax", np.array([0], np.int64))]),
                                    self.init("hidden", np.array([hidden], np.int64))], axis=0)
        zeros = self.one("ConstantOfShape", [shape], value=numpy_helper.from_array(np.zeros(1, np.float32)))
        return [self.one("Slice", [zeros, self.init("s", np.array([k * dirs], np.int64)),
                                   self.init("e", np.array([(k + 1) * dirs], np.int64)),
                                   self.init("a", np.array([0], np.int64))]) for k in range(layers)]

    model = Net.model  # same ModelProto wrapping as the CNN builder


def _merge_directions(s: Seq, y: str) -> str:
    """Y [seq, 2, batch, hidden] -> [seq, batch, 2*hidden], as PyTorch exports a bidirectional layer."""
    t = s.one("Transpose", [y], perm=[0, 2, 1, 3])
    return s.one("Reshape", [t, s.init("shape", np.array([0, 0, -1], np.int64))])


def recurrent_stack() -> onnx.ModelProto:
    """Linear -> bidirectional LSTM -> GRU -> RNN (its Y_h) -> Gemm, over a dynamic batch."""
    s = Seq("recurrent_stack")
    s.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 6])]
    h = s.one("Relu", [s.linear("x", 6, 8)])
    h = s.one("Transpose", [h], perm=[1, 0, 2])  # [seq, batch, features]
    y = _merge_directions(s, s.recurrent("LSTM", h, 8, 6, dirs=2)[0])
    g = s.recurrent("GRU", y, 12, 7, linear_before_reset=1)[0]
    g = s.one("Squeeze", [g, s.init("ax", np.array([1], np.int64))])
    y_h = s.recurrent("RNN", g, 7, 5)[1]
    last = s.one("Squeeze", [y_h, s.init("ax", np.array([0], np.int64))])  # [batch, hidden]
    w = s.weight("fc", (3, 5))
    return s.model([s.one("Gemm", [last, w, s.weight("fcb", (3,), 0.1)], transB=1)])


def lstm_states() -> onnx.ModelProto:
    """A forward LSTM with initial states and peepholes as initializers; Y and Y_c are read."""
    s = Seq("lstm_states")
    s.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 4])]
    h = s.one("Transpose", [s.one("Tanh", [s.linear("x", 4, 8)])], perm=[1, 0, 2])
    states = (s.rng.normal(0, 0.5, (1, 2, 6)), s.rng.normal(0, 0.5, (1, 2, 6)))
    y, _, y_c = s.recurrent("LSTM", h, 8, 6, states=states, peepholes=True)
    seq = s.one("Squeeze", [y, s.init("ax", np.array([1], np.int64))])  # [seq, batch, hidden]
    cell = s.one("Squeeze", [y_c, s.init("ax", np.array([0], np.int64))])  # [batch, hidden]
    return s.model([s.linear(seq, 6, 3), s.linear(cell, 6, 2)])


def tagger(hidden: int = 8, head: int = 0) -> onnx.ModelProto:
    """A character tagger like the int8 diacritizers: embedding, two bidirectional LSTMs with zero
    states built at run time (one ConstantOfShape sliced per layer), a linear head (with *head*: a hidden
    ReLU layer that wide before it, a group no recurrence reads)."""
    s = Seq("tagger")
    s.inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 7])]  # steps: recurrence matters
    emb = s.one("Gather", [s.weight("table", (20, 6)), "ids"], axis=0)
    x = s.one("Transpose", [emb], perm=[1, 0, 2])
    states = s.zero_states(x, 2, 2, hidden)
    cin = 6
    for layer in range(2):
        lstm = s.node("LSTM", [x, s.weight("W", (2, 4 * hidden, cin)), s.weight("R", (2, 4 * hidden, hidden)),
                               s.weight("B", (2, 8 * hidden), 0.1), "", states[layer], states[layer]],
                      n_out=3, hidden_size=hidden, direction="bidirectional")
        x, cin = _merge_directions(s, lstm[0]), 2 * hidden
    out = s.one("Transpose", [x], perm=[1, 0, 2])
    if head:
        out, cin = s.one("Relu", [s.linear(out, cin, head)]), head
    return s.model([s.linear(out, cin, 5)])


def quantize(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's dynamic int8 quantization (what the real int8 exports went through)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="spac-quant-") as tmp:
        src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(model, src)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        return onnx.load(dst)


def qdq_activations() -> onnx.ModelProto:
    """Conv -> QuantizeLinear/DequantizeLinear of the activation (per axis, then per tensor) -> Conv: exact."""
    s = Seq("qdq_activations", opset=13)
    s.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])]
    c = s.one("Relu", [s.one("Conv", ["x", s.weight("cw", (8, 3, 3, 3)), s.weight("cb", (8,), 0.1)], pads=[1] * 4)])
    scale = s.rng.uniform(0.01, 0.03, 8).astype(np.float32)
    zero = s.rng.integers(0, 20, 8).astype(np.uint8)
    q = s.one("QuantizeLinear", [c, s.init("scale", scale), s.init("zp", zero)], axis=1)
    d = s.one("DequantizeLinear", [q, s.init("scale", scale), s.init("zp", zero)], axis=1)
    q = s.one("QuantizeLinear", [d, s.init("scale", np.array(0.02, np.float32))])
    d = s.one("DequantizeLinear", [q, s.init("scale", np.array(0.02, np.float32))])
    return s.model([s.one("Conv", [d, s.weight("cw", (4, 8, 1, 1)), s.weight("cb", (4,), 0.1)])])


RECURRENT_MODELS = {f.__name__: f for f in (recurrent_stack, lstm_states, tagger)}
EXACT_MODELS = {**RECURRENT_MODELS, "qdq_activations": qdq_activations}


def quantize_static(model: onnx.ModelProto, qdq: bool = True, per_channel: bool = True) -> onnx.ModelProto:
    """onnxruntime's static int8 quantization (QDQ, or QOperator with *qdq* False), calibrated on noise."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    from spa_compiler.runtime import random_inputs, session

    class Noise(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([random_inputs(session(model), batch=2, seed=k) for k in range(4)])

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory(prefix="spac-quant-") as tmp:
        src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(model, src)
        ort_quantize_static(src, dst, Noise(), quant_format=QuantFormat.QDQ if qdq else QuantFormat.QOperator,
                            per_channel=per_channel, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
        return onnx.load(dst)


def float_lstms(model: onnx.ModelProto) -> onnx.ModelProto:
    """*model* with every DynamicQuantizeLSTM turned into a float LSTM (dequantized, transposed W and R).

    Same topology without the per-tensor quantization of ``h`` at run time, whose range shifts make
    pruned int8 LSTMs inexact: what the exact-ish oracle needs on real int8 models.
    """
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type != "DynamicQuantizeLSTM":
            nodes.append(node)
            continue
        inputs = list(node.input) + [""] * (12 - len(node.input))
        weights = []
        for w, scale, zero in ((1, 8, 9), (2, 10, 11)):  # int8 [dirs, rows, gates*hidden], per tensor or channel
            shape = (inits[inputs[scale]].shape[0], 1, -1)
            values = (inits[inputs[w]].astype(np.float32) - inits[inputs[zero]].astype(np.float32).reshape(shape))
            values = (values * inits[inputs[scale]].reshape(shape)).transpose(0, 2, 1)
            weights.append(inputs[w] + "_float")
            model.graph.initializer.append(numpy_helper.from_array(values.astype(np.float32), weights[-1]))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        nodes.append(helper.make_node("LSTM", [inputs[0], *weights, *inputs[3:8]], list(node.output), name=node.name,
                                      **attrs))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def batch_first_lstm() -> onnx.ModelProto:
    """Linear -> bidirectional LSTM with ``layout=1`` (X ``[batch, seq, features]``, Y ``[batch, seq, dirs,
    hidden]``, states ``[batch, dirs, hidden]`` as initializers) -> Y merged over directions -> linear.
    onnxruntime's CPU kernels refuse layout 1: tests run it through :func:`time_major`."""
    s = Seq("batch_first_lstm", opset=14)
    s.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 4])]
    h = s.one("Tanh", [s.linear("x", 4, 8)])
    states = (s.rng.normal(0, 0.5, (2, 2, 6)), s.rng.normal(0, 0.5, (2, 2, 6)))
    y = s.recurrent("LSTM", h, 8, 6, dirs=2, states=states, layout=1)[0]
    merged = s.one("Reshape", [y, s.init("shape", np.array([0, 0, -1], np.int64))])  # [batch, seq, 2*hidden]
    return s.model([s.linear(merged, 12, 3)])


def time_major(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same computation with every ``layout=1`` recurrent node made ``layout=0`` between Transposes."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = []
    for node in model.graph.node:
        layout = next((a for a in node.attribute if a.name == "layout"), None)
        if layout is None or layout.i == 0:
            nodes.append(node)
            continue
        layout.i = 0
        for index in (0, 5, 6):  # X [batch, seq, in] and states [batch, dirs, hidden]
            if index < len(node.input) and node.input[index]:
                name = f"{node.input[index]}__tm{index}"
                nodes.append(helper.make_node("Transpose", [node.input[index]], [name], perm=[1, 0, 2]))
                node.input[index] = name
        outputs = list(node.output)
        for index, name in enumerate(outputs):
            if name:
                node.output[index] = f"{name}__tm"
        nodes.append(node)
        for index, perm in ((0, [2, 0, 1, 3]), (1, [1, 0, 2]), (2, [1, 0, 2])):
            if index < len(outputs) and outputs[index]:
                nodes.append(helper.make_node("Transpose", [node.output[index]], [outputs[index]], perm=perm))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model
