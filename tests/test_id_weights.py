"""Data-free ids skip the tokens a trained model never saw (zero embedding rows), in every stage.

The rawi diacritizers' tables are more than half zero rows (emoji, Latin letters, padding): uniform ids
made data-free statistics and ``--max-error`` measurements of text that never occurs
(:func:`inputfacts.row_weights`).
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

import spa_compiler
from spa_compiler.inputfacts import input_facts, row_weights
from spa_compiler.inputspec import for_model
from spa_compiler.obspa import statistics

VOCAB = 40
UNSEEN = np.arange(0, VOCAB, 3)  # every third row zero, the padding row 0 among them


def _table(zero_rows=UNSEEN, quantized: bool = False) -> np.ndarray:
    table = np.random.default_rng(0).standard_normal((VOCAB, 8))
    table[zero_rows] = 0.0
    if quantized:  # uint8 around a zero point of 128, as onnxruntime's dynamic quantization writes tables
        return (np.round(table * 20) + 128).astype(np.uint8)
    return table.astype(np.float32)


def _tagger(table: np.ndarray) -> onnx.ModelProto:
    """ids (batch, seq) -> Gather (-> Transpose, DequantizeLinear, Transpose for a uint8 table) -> MatMul ->
    Relu -> MatMul."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(table, "table"),
             numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["rows"])]
    if table.dtype == np.uint8:  # dequantized after a transpose, as onnxruntime feeds an LSTM
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "scale"),
                  numpy_helper.from_array(np.array(128, np.uint8), "zero")]
        nodes += [helper.make_node("Transpose", ["rows"], ["rows_t"], perm=[1, 0, 2]),
                  helper.make_node("DequantizeLinear", ["rows_t", "scale", "zero"], ["e_t"]),
                  helper.make_node("Transpose", ["e_t"], ["e"], perm=[1, 0, 2])]
    else:
        nodes.append(helper.make_node("Identity", ["rows"], ["e"]))
    nodes += [helper.make_node("MatMul", ["e", "w1"], ["h0"]),
              helper.make_node("Relu", ["h0"], ["h"]),
              helper.make_node("MatMul", ["h", "w2"], ["scores"])]
    graph = helper.make_graph(nodes, "tagger", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    return model


def _gather(model: onnx.ModelProto) -> gs.Node:
    return next(n for n in gs.import_onnx(model).nodes if n.op == "Gather")


def test_ids_are_drawn_in_proportion_to_their_rows_norm_and_unseen_ones_never():
    for quantized in (False, True):
        table = _table(quantized=quantized)
        weights = np.array(row_weights(_gather(_tagger(table))))
        norms = np.linalg.norm(table.astype(np.float64) - (128 if quantized else 0), axis=1)
        assert weights.shape == (VOCAB,) and np.isclose(weights.sum(), 1.0)
        assert np.all(weights[UNSEEN] == 0.0) and np.all(weights[norms > 0] > 0)
        assert np.allclose(weights, norms / norms.sum())  # measured from the zero point when quantized


def test_no_weights_without_a_constant_nonzero_table():
    assert row_weights(_gather(_tagger(_table(zero_rows=np.arange(VOCAB))))) is None  # nothing to go by
    graph = gs.import_onnx(_tagger(_table()))
    gather = next(n for n in graph.nodes if n.op == "Gather")
    gather.inputs[0] = gs.Variable("table_in", dtype=np.float32, shape=[VOCAB, 8])  # a table computed at run time
    assert row_weights(gather) is None



def test_a_table_without_zero_rows_keeps_uniform_ids():
    """No zero row, no evidence that norms follow use: models whose rows all start random draw as before."""
    assert row_weights(_gather(_tagger(_table(zero_rows=[])))) is None
    facts = input_facts(gs.import_onnx(_tagger(_table(zero_rows=[]))))
    assert facts["ids"].kind == "ids" and facts["ids"].high == VOCAB and facts["ids"].weights is None
    one_unused = np.array(row_weights(_gather(_tagger(_table(zero_rows=[0])))))  # a padding row is evidence enough
    assert one_unused[0] == 0.0 and np.all(one_unused[1:] > 0)


def test_no_stage_feeds_an_unseen_token(tmp_path):
    path = tmp_path / "tagger.onnx"
    onnx.save(_tagger(_table(quantized=True)), str(path))
    spec = for_model(str(path))
    fed = [f["ids"] for f in statistics._batches(None, "synthetic", None, 64, 32, 0, "auto", spec)]
    result = spa_compiler.prune(str(path), ratio=0.25, criterion="obspa", samples=16)
    fed += [b["ids"] for b in result.compiled.dense.measurement.inputs.batches]
    drawn = np.unique(np.concatenate([ids.ravel() for ids in fed]))
    assert not np.isin(drawn, UNSEEN).any()
    assert len(drawn) == VOCAB - len(UNSEEN)  # every used token still appears
