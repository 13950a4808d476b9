"""OBSPA on real weights: data-free inputs shaped like the real ones, and a compensation that never hurts.

Issue 12 item 4: ids within the vocabulary, plausible masks, NHWC images and spectrograms for the
statistics; damping raised on ill-conditioned Hessians, plain removal where compensation gives
non-finite weights or a larger output error than none, every fallback reported, no non-finite weight
ever written.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

import spa_compiler
from spa_compiler.obspa.compensate import WORSE_THAN_NONE, LayerEntry, ObsContext, output_error
from spa_compiler.inputfacts import input_facts
from spa_compiler.inputspec import for_model
from spa_compiler.obspa.obs import MAX_DAMPING, ConsumerLayer, KroneckerHessian, robust_inverse
from spa_compiler.obspa.statistics import LayerStats


def _embedding_model() -> onnx.ModelProto:
    """ids (int64) and float char ids (cast, Keras-style) index two tables; a mask; an NHWC image."""
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((139, 8)).astype(np.float32), "table")
    small = numpy_helper.from_array(rng.standard_normal((12, 8)).astype(np.float32), "small")
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e1"]),
             helper.make_node("Cast", ["chars"], ["chars_int"], to=TensorProto.INT64),
             helper.make_node("Gather", ["small", "chars_int"], ["e2"]),
             helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["image"], ["pix"], keepdims=0)]
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("chars", TensorProto.FLOAT, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 16, 16, 3])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("e1", "e2", "mask_f", "pix")]
    model = helper.make_model(helper.make_graph(nodes, "kinds", inputs, outputs, [table, small]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_data_free_inputs_look_like_the_real_ones():
    model = _embedding_model()
    kinds = input_facts(gs.import_onnx(model))
    assert (kinds["ids"].kind, kinds["ids"].high) == ("ids", 139)
    assert (kinds["chars"].kind, kinds["chars"].high) == ("ids", 12)
    assert kinds["attention_mask"].kind == "mask"
    assert kinds["image"].kind == "float"
    spec = for_model(model)
    seq = spec.shapes()["ids"][1]
    assert seq > 1 and spec.shapes()["chars"][1] == seq  # sequence dims: a sentence, not one token
    feeds = spec.feeds(seed=0, batch=4, noise="auto")
    ids, chars, mask, image = (feeds[n] for n in ("ids", "chars", "attention_mask", "image"))
    assert ids.shape == (4, seq) and ids.min() >= 0 and ids.max() < 139 and ids.max() > 100
    assert chars.dtype == np.float32 and set(np.unique(chars)) <= set(range(12)) and len(np.unique(chars)) > 6
    assert set(np.unique(mask)) <= {0, 1} and np.all(mask[:, 0] == 1) and mask.mean() > 0.5
    # NHWC: correlated along the spatial axes (1/f² noise), not along channels-as-width
    assert np.corrcoef(image[:, :, :-1].ravel(), image[:, :, 1:].ravel())[0, 1] > 0.5


def test_robust_inverse_raises_damping_and_refuses_non_finite():
    h = np.diag([1e30, 1.0, 1e-30])
    hinv, damping = robust_inverse(h, 0.0)
    assert hinv is not None and np.all(np.isfinite(hinv)) and damping > 0
    assert robust_inverse(np.array([[np.nan, 0], [0, 1.0]]), 0.01)[0] is None
    assert robust_inverse(np.array([[np.inf, 0], [0, 1.0]]), 0.01) == (None, 0.01)
    assert MAX_DAMPING <= 1.0


def _entry(w: np.ndarray, h: np.ndarray, mean: np.ndarray) -> tuple[LayerEntry, ObsContext]:
    graph = gs.Graph()
    context = ObsContext(graph, analysis=None)
    layer = ConsumerLayer(gs.Node("Gemm", name="dense"), None, w.shape, w, 1)
    return LayerEntry(layer, LayerStats(h, mean, np.abs(mean), 100), 0.01, context), context


def test_compensation_never_worse_than_plain_removal():
    """Inputs with a large shared mean and tiny independent noise: OBS on the raw second moment moves the
    removed column's weight onto its twin (they correlate through the mean), which after the mean is
    folded into the bias only adds the twin's noise; plain removal is better and is kept, and reported."""
    eps = 1e-4
    h = np.array([[1 + eps, 1.0], [1.0, 1 + eps]])
    mean = np.array([1.0, 1.0])
    entry, context = _entry(np.array([[1.0, 1.0]]), h, mean)
    w1 = entry.compensated(np.array([0]))
    np.testing.assert_array_equal(w1, [[0.0, 1.0]])
    assert context.fallbacks[WORSE_THAN_NONE] == ["dense"]
    assert any("larger output error" in line for line in context.warnings())
    # correlated *variance* (not just mean): compensation helps and is kept
    h = np.array([[1.0, 0.9], [0.9, 1.0]])
    entry, context = _entry(np.array([[1.0, 1.0]]), h, np.zeros(2))
    w1 = entry.compensated(np.array([0]))
    assert w1[0, 1] > 1.5 and not context.fallbacks
    exact, zero = KroneckerHessian.exact(h), np.zeros(2)
    assert output_error(np.array([[1.0, 1.0]]) - w1, exact, zero) < output_error(np.array([[1.0, 0.0]]), exact, zero)


def test_no_non_finite_weight_from_overflowing_statistics(tmp_path):
    """Calibration inputs so large that activations overflow to Inf: statistics are non-finite, OBSPA
    ranks and removes without compensation, says so, and writes only finite weights."""
    calib = {"x": np.full((8, 3, 32, 32), 3e38, np.float32)}
    result = spa_compiler.prune("models/demo_cnn.onnx", ratio=0.3, criterion="obspa", calib=calib)
    for init in result.model.graph.initializer:
        assert np.all(np.isfinite(numpy_helper.to_array(init))), init.name
    assert any("non-finite" in w for w in result.report["warnings"])
