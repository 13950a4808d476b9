"""Shape inference for onnxruntime contrib ops that its own symbolic inference does not know.

onnxruntime's ``SymbolicShapeInference`` stops at ``DynamicQuantizeLSTM``
(what its dynamic quantizer writes for every LSTM), and every shape after it
stays unknown, so no layer after an int8 LSTM could be analysed.  This
subclass adds the op: its outputs have the shapes of a float LSTM's.
"""
from __future__ import annotations

import onnx
from onnx import helper
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference, get_attribute, get_shape_from_sympy_shape


class ContribShapeInference(SymbolicShapeInference):
    """SymbolicShapeInference plus the contrib ops spa-compiler has rules for."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dispatcher_["DynamicQuantizeLSTM"] = self._infer_recurrent
        for op in ("QLinearSigmoid", "QLinearLeakyRelu"):
            self.dispatcher_[op] = self._propagate_shape_and_type
        self.dispatcher_["QLinearGlobalAveragePool"] = self._infer_global_pool
        self.dispatcher_["QGemm"] = self._infer_qgemm
        self.dispatcher_["QLinearConcat"] = self._infer_qlinear_concat

    def _set(self, name: str, elem_type: int, shape: list) -> None:
        self.known_vi_[name].CopyFrom(helper.make_tensor_value_info(name, elem_type, shape))

    def _elem_type(self, node, index: int) -> int:
        name = node.input[index]
        if name in self.known_vi_:
            return self.known_vi_[name].type.tensor_type.elem_type
        return self.initializers_[name].data_type

    def _infer_global_pool(self, node) -> None:
        """Spatial axes become 1 (channels first, or last with ``channels_last``)."""
        shape = self._get_shape(node, 0)
        last = get_attribute(node, "channels_last", 0)
        spatial = range(1, len(shape) - 1) if last else range(2, len(shape))
        self._set(node.output[0], self._elem_type(node, 0), [1 if i in spatial else d for i, d in enumerate(shape)])

    def _infer_qgemm(self, node) -> None:
        """``[M, N]``; float unless quantized by y_scale/y_zero_point (inputs 7 and 8)."""
        a, b = self._get_shape(node, 0), self._get_shape(node, 3)
        rows = a[1] if get_attribute(node, "transA", 0) else a[0]
        cols = b[0] if get_attribute(node, "transB", 0) else b[1]
        quantized = len(node.input) > 8 and node.input[8]
        elem = self._elem_type(node, 8) if quantized else onnx.TensorProto.FLOAT
        self._set(node.output[0], elem, [rows, cols])

    def _infer_qlinear_concat(self, node) -> None:
        """Concat of inputs 2, 5, 8, ... (each followed by its scale and zero point) along ``axis``."""
        shapes = [self._get_sympy_shape(node, i) for i in range(2, len(node.input), 3)]
        axis = get_attribute(node, "axis")
        axis = axis + len(shapes[0]) if axis < 0 else axis
        shape = list(shapes[0])
        shape[axis] = sum(s[axis] for s in shapes)
        self._update_computed_dims(shape)
        self._set(node.output[0], self._elem_type(node, 2), get_shape_from_sympy_shape(shape))

    def _infer_recurrent(self, node) -> None:
        """Y ``[seq, dirs, batch, hidden]``; Y_h and Y_c ``[dirs, batch, hidden]`` (layout 0)."""
        seq, batch = self._get_shape(node, 0)[:2]
        direction = get_attribute(node, "direction", b"forward")
        dirs = 2 if (direction.decode() if isinstance(direction, bytes) else direction) == "bidirectional" else 1
        hidden = get_attribute(node, "hidden_size")
        shapes = ([seq, dirs, batch, hidden], [dirs, batch, hidden], [dirs, batch, hidden])
        for name, shape in zip(node.output, shapes):
            if name:
                self._set(name, onnx.TensorProto.FLOAT, shape)

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
