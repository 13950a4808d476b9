"""Shape inference for onnxruntime contrib ops that its own symbolic inference does not know.

onnxruntime's ``SymbolicShapeInference`` stops at ``DynamicQuantizeLSTM``
(what its dynamic quantizer writes for every LSTM), and every shape after it
stays unknown, so no layer after an int8 LSTM could be analysed.  This
subclass adds the op: its outputs have the shapes of a float LSTM's.
"""
from __future__ import annotations

import onnx
from onnx import helper
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference, get_attribute


class ContribShapeInference(SymbolicShapeInference):
    """SymbolicShapeInference plus the contrib ops spa-compiler has rules for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dispatcher_["DynamicQuantizeLSTM"] = self._infer_recurrent

    def _infer_recurrent(self, node) -> None:
        """Y ``[seq, dirs, batch, hidden]``; Y_h and Y_c ``[dirs, batch, hidden]`` (layout 0)."""
        seq, batch = self._get_shape(node, 0)[:2]
        direction = get_attribute(node, "direction", b"forward")
        dirs = 2 if (direction.decode() if isinstance(direction, bytes) else direction) == "bidirectional" else 1
        hidden = get_attribute(node, "hidden_size")
        shapes = ([seq, dirs, batch, hidden], [dirs, batch, hidden], [dirs, batch, hidden])
        for name, shape in zip(node.output, shapes):
            if name:
                self.known_vi_[name].CopyFrom(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))

    @staticmethod
    def infer_shapes(in_mp, int_max=2**31 - 1, auto_merge=False, guess_output_rank=False, verbose=0):
        """``SymbolicShapeInference.infer_shapes`` with this class (the original hard-codes its own)."""
        inference = ContribShapeInference(int_max, auto_merge, guess_output_rank, verbose)
        inference._preprocess(in_mp)
        complete = False
        while inference.run_:
            complete = inference._infer_impl()
        inference._update_output_from_vi()
        if not complete:
            raise RuntimeError("incomplete symbolic shape inference")
        return inference.out_mp_
