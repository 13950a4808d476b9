"""Small graphs with If/Loop/Scan subgraphs built with onnx.helper, for the control-flow oracle tests.

What real exporters write: torch.onnx's ``if`` on a shape or flag (branches
with different ops, weights as outer initializers or as the branch's own),
a Loop that applies a layer a data-dependent number of times (a loop-carried
feature map), and tf2onnx's Scan-based recurrent cells (the state carried
across steps, a per-step output stacked along the scan axis).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .sequence import Seq


def _body(name: str, nodes, inputs, outputs, inits=()) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, inputs, outputs, list(inits))


def _vi(name: str, dims, dtype=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    info = helper.make_tensor_value_info(name, dtype, dims)
    info.type.tensor_type.shape.SetInParent()  # a scalar's empty shape is still a shape (the checker asks)
    return info


def _model(s: Seq, outputs: dict[str, list]) -> onnx.ModelProto:
    """The model with declared output shapes (the checker asks for them once a graph holds a Loop)."""
    model = s.model(list(outputs))
    for out in model.graph.output:
        out.CopyFrom(_vi(out.name, outputs[out.name]))
    return model


def _positive(s: Seq, x: str) -> str:
    """A data-dependent condition (mean of *x* > 0): the test feeds pick each branch."""
    mean = s.one("ReduceMean", [x], keepdims=0)
    return s.one("Greater", [mean, s.init("zero", np.array(0.0, np.float32))])


def if_branches() -> onnx.ModelProto:
    """Conv -> If(then: Conv with an outer weight -> Relu; else: Conv with a branch weight -> Sigmoid ->
    Mul by a per-channel branch constant) -> Conv: channels cross the branch boundary both ways."""
    s = Seq("if_branches")
    s.inputs = [_vi("x", ["N", 3, 6, 6])]
    a = s.one("Relu", [s.one("Conv", ["x", s.weight("w", (8, 3, 3, 3)), s.weight("b", (8,), 0.1)], pads=[1] * 4)])
    outer_w, outer_b = s.weight("tw", (6, 8, 1, 1)), s.weight("tb", (6,), 0.1)
    then = _body("then", [helper.make_node("Conv", [a, outer_w, outer_b], ["t_conv"], name="t_conv"),
                          helper.make_node("Relu", ["t_conv"], ["t_out"], name="t_relu")],
                 [], [_vi("t_out", ["N", 6, 6, 6])])
    rng = s.rng
    else_inits = [numpy_helper.from_array(rng.normal(0, 0.4, (6, 8, 3, 3)).astype(np.float32), "e_w"),
                  numpy_helper.from_array(rng.uniform(0.5, 1.5, (1, 6, 1, 1)).astype(np.float32), "e_scale")]
    other = _body("else", [helper.make_node("Conv", [a, "e_w"], ["e_conv"], name="e_conv", pads=[1] * 4),
                           helper.make_node("Sigmoid", ["e_conv"], ["e_sig"], name="e_sig"),
                           helper.make_node("Mul", ["e_sig", "e_scale"], ["e_out"], name="e_mul")],
                  [], [_vi("e_out", ["N", 6, 6, 6])], else_inits)
    y = s.node("If", [_positive(s, "x")], then_branch=then, else_branch=other)[0]
    return _model(s, {s.one("Conv", [y, s.weight("ow", (4, 6, 1, 1)), s.weight("ob", (4,), 0.1)]): ["N", 4, 6, 6]})


def nested_if() -> onnx.ModelProto:
    """An If inside an If branch (the VAD exports nest them per sample rate); the inner branches each hold
    a Conv on an outer tensor; the outer else branch passes the outer tensor through (an Identity)."""
    s = Seq("nested_if")
    s.inputs = [_vi("x", ["N", 3, 6, 6])]
    a = s.one("Relu", [s.one("Conv", ["x", s.weight("w", (8, 3, 3, 3)), s.weight("b", (8,), 0.1)], pads=[1] * 4)])
    small = s.one("Less", [s.one("ReduceMax", ["x"], keepdims=0), s.init("two", np.array(2.0, np.float32))])
    inner_then = _body("inner_then", [helper.make_node("Conv", [a, s.weight("iw", (8, 8, 1, 1))], ["it_out"],
                                                       name="it_conv")], [], [_vi("it_out", ["N", 8, 6, 6])])
    inner_else = _body("inner_else", [helper.make_node("Conv", [a, s.weight("jw", (8, 8, 3, 3))], ["ie_out"],
                                                       name="ie_conv", pads=[1] * 4)],
                       [], [_vi("ie_out", ["N", 8, 6, 6])])
    outer_then = _body("outer_then", [helper.make_node("If", [small], ["inner_out"], name="inner_if",
                                                       then_branch=inner_then, else_branch=inner_else)],
                       [], [_vi("inner_out", ["N", 8, 6, 6])])
    outer_else = _body("outer_else", [helper.make_node("Identity", [a], ["pass_out"], name="pass")],
                       [], [_vi("pass_out", ["N", 8, 6, 6])])
    y = s.node("If", [_positive(s, "x")], then_branch=outer_then, else_branch=outer_else)[0]
    return _model(s, {s.one("Conv", [y, s.weight("ow", (4, 8, 1, 1)), s.weight("ob", (4,), 0.1)]): ["N", 4, 6, 6]})


def loop_refine() -> onnx.ModelProto:
    """Conv -> Loop(3 steps; carried feature map h -> Relu(Conv(h)) + h, a per-step scan output Conv(h))
    -> Conv on the final map; the scan outputs are reduced over steps and read by a Conv too."""
    s = Seq("loop_refine")
    s.inputs = [_vi("x", ["N", 3, 6, 6])]
    a = s.one("Conv", ["x", s.weight("w", (8, 3, 3, 3)), s.weight("b", (8,), 0.1)], pads=[1] * 4)
    body_inits = [numpy_helper.from_array(s.rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), "l_w")]
    outer_v = s.weight("lv", (5, 8, 1, 1))
    body = _body("loop_body", [
        helper.make_node("Identity", ["cond_in"], ["cond_out"], name="l_cond"),
        helper.make_node("Conv", ["h_in", "l_w"], ["l_conv"], name="l_conv", pads=[1] * 4),
        helper.make_node("Relu", ["l_conv"], ["l_relu"], name="l_relu"),
        helper.make_node("Add", ["l_relu", "h_in"], ["h_out"], name="l_add"),
        helper.make_node("Conv", ["h_in", outer_v], ["scan_out"], name="l_view"),
    ], [_vi("iter", [], TensorProto.INT64), _vi("cond_in", [], TensorProto.BOOL), _vi("h_in", ["N", 8, 6, 6])],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("h_out", ["N", 8, 6, 6]), _vi("scan_out", ["N", 5, 6, 6])],
        body_inits)
    final, steps = s.node("Loop", [s.init("trips", np.array(3, np.int64)), "", a], n_out=2, body=body)
    view = s.one("ReduceMean", [steps], axes=[0], keepdims=0)
    return _model(s, {s.one("Conv", [final, s.weight("ow", (4, 8, 1, 1))]): ["N", 4, 6, 6],
                      s.one("Conv", [view, s.weight("vw", (2, 5, 1, 1))]): ["N", 2, 6, 6]})


def scan_rnn() -> onnx.ModelProto:
    """tf2onnx's Scan-based RNN cell: MatMul -> Scan(state h, per step h' = Tanh(x_t W + h R + b))
    -> per-step outputs [batch, steps, hidden] (scan axis 1) -> MatMul head."""
    s = Seq("scan_rnn")
    s.inputs = [_vi("x", [2, 5, 4])]
    hidden = 6
    feats = s.one("Relu", [s.linear("x", 4, 7)])  # [2, 5, 7]
    w = s.weight("cw", (7, hidden))
    body_inits = [numpy_helper.from_array(s.rng.normal(0, 0.4, (hidden, hidden)).astype(np.float32), "c_r"),
                  numpy_helper.from_array(s.rng.normal(0, 0.1, (hidden,)).astype(np.float32), "c_b")]
    body = _body("scan_body", [
        helper.make_node("MatMul", ["x_t", w], ["c_in"], name="c_in"),
        helper.make_node("MatMul", ["h_prev", "c_r"], ["c_rec"], name="c_rec"),
        helper.make_node("Add", ["c_in", "c_rec"], ["c_sum"], name="c_sum"),
        helper.make_node("Add", ["c_sum", "c_b"], ["c_pre"], name="c_pre"),
        helper.make_node("Tanh", ["c_pre"], ["h_next"], name="c_tanh"),
        helper.make_node("Identity", ["h_next"], ["y_t"], name="c_y"),
    ], [_vi("h_prev", [2, hidden]), _vi("x_t", [2, 7])], [_vi("h_next", [2, hidden]), _vi("y_t", [2, hidden])],
        body_inits)
    h0 = s.init("h0", np.zeros((2, hidden), np.float32))
    _, ys = s.node("Scan", [h0, feats], n_out=2, body=body, num_scan_inputs=1, scan_input_axes=[1],
                   scan_output_axes=[1])
    return _model(s, {s.linear(ys, hidden, 3): [2, 5, 3]})


def if_mismatch() -> onnx.ModelProto:
    """An If whose branches return tensors of different channel counts (a shape-dependent export): the
    output's channels cannot be tied between branches, so they freeze; the rest still prunes."""
    s = Seq("if_mismatch")
    s.inputs = [_vi("x", ["N", 3, 6, 6])]
    a = s.one("Relu", [s.one("Conv", ["x", s.weight("w", (8, 3, 3, 3)), s.weight("b", (8,), 0.1)], pads=[1] * 4)])
    then = _body("then", [helper.make_node("Conv", [a, s.weight("tw", (6, 8, 1, 1))], ["t_out"], name="t_conv")],
                 [], [_vi("t_out", ["N", 6, 6, 6])])
    other = _body("else", [helper.make_node("Conv", [a, s.weight("ew", (5, 8, 1, 1))], ["e_out"], name="e_conv")],
                  [], [_vi("e_out", ["N", 5, 6, 6])])
    y = s.node("If", [_positive(s, "x")], then_branch=then, else_branch=other)[0]
    return _model(s, {s.one("ReduceSum", [y, s.init("axes", np.array([1], np.int64))], keepdims=1): ["N", 1, 6, 6]})


CONTROL_FLOW_MODELS = {f.__name__: f for f in (if_branches, nested_if, loop_refine, scan_rnn)}
