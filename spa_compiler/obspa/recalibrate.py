"""BatchNorm re-calibration: recompute running statistics of a pruned model on calibration inputs.

Pruning and compensation shift every layer's output distribution; with real
inputs at hand, the cheapest repair is to measure the new per-channel mean
and variance at every BatchNormalization input (onnxruntime, streamed in
batches) and write them into the model.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..runtime import session
from .statistics import calib_feeds


def recalibrate_batchnorm(model: onnx.ModelProto, calib: dict[str, np.ndarray], batch: int = 64) -> onnx.ModelProto:
    """A copy of *model* whose BatchNormalization running mean/var are measured on *calib*."""
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    if not bns:
        return model
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for node in bns:
        if node.input[0] not in existing:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(node.input[0]))
    sess = session(probe)
    names = [o.name for o in sess.get_outputs()]
    sums: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for feeds in calib_feeds(sess, calib, batch):
        values = dict(zip(names, sess.run(None, feeds)))
        for node in bns:
            x = values[node.input[0]].astype(np.float64)
            axes = (0,) + tuple(range(2, x.ndim))
            sums[node.name] = sums.get(node.name, 0) + x.sum(axis=axes)
            squares[node.name] = squares.get(node.name, 0) + (x * x).sum(axis=axes)
            counts[node.name] = counts.get(node.name, 0) + x.size // x.shape[1]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    for node in bns:
        n = counts[node.name]
        mean = sums[node.name] / n
        var = np.maximum(squares[node.name] / n - mean ** 2, 0.0)
        for name, value in ((node.input[3], mean), (node.input[4], var)):
            if name in inits:
                dtype = numpy_helper.to_array(inits[name]).dtype
                inits[name].CopyFrom(numpy_helper.from_array(value.astype(dtype), name))
    return out
