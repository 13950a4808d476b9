"""One input-generation path: every stage feeds the model the inputs the input spec draws.

The dense run, verification, the fidelity measurement (and ``--max-error`` probes) and the OBSPA
statistics all take their data-free inputs from the compiled model's :class:`inputspec.InputSpecs`:
the same dims (given or chosen), ids within the table they index, and the dense run at the spec
records the fidelity reference itself (the dense model is not run a second time).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import spa_compiler
from spa_compiler import fidelity
from spa_compiler.inputspec import for_model
from spa_compiler.obspa import statistics
from spa_compiler.pipeline import compile_model

VOCAB = 50


def _tagger(batch=1) -> onnx.ModelProto:
    """ids (batch, seq) -> embedding -> two Gemm-like MatMuls -> per-position scores."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((VOCAB, 8)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"]),
             helper.make_node("MatMul", ["e", "w1"], ["h0"]),
             helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h"]),
             helper.make_node("MatMul", ["h", "w2"], ["scores"])]
    graph = helper.make_graph(nodes, "tagger", [helper.make_tensor_value_info("ids", TensorProto.INT64, [batch, "seq"])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_batch_one_sequence_model_gets_one_long_sentence_per_statistics_run():
    spec = for_model(_tagger())
    seq = spec.shapes()["ids"][1]
    feeds = list(statistics._batches(None, "synthetic", None, 64, 64, 0, "auto", spec))
    assert [f["ids"].shape for f in feeds] == [(1, seq * 64)]  # 64 sentences' worth of positions, not one
    assert feeds[0]["ids"].max() < VOCAB and len(np.unique(feeds[0]["ids"])) > VOCAB // 2
    batched = for_model(_tagger(batch="batch"))
    assert [f["ids"].shape for f in statistics._batches(None, "synthetic", None, 64, 32, 0, "auto", batched)] == \
        [(32, seq), (32, seq)]


def test_every_stage_feeds_the_given_dims_and_the_dense_run_records_the_reference(monkeypatch, tmp_path):
    path = tmp_path / "tagger.onnx"
    onnx.save(_tagger(batch="batch"), str(path))

    def second_dense_run(*args, **kwargs):
        raise AssertionError("the dense model ran a second time for the fidelity reference")

    monkeypatch.setattr(fidelity, "measure_dense", second_dense_run)
    seen = []
    original = statistics._batches

    def spy(*args, **kwargs):
        for feeds in original(*args, **kwargs):
            seen.append(feeds["ids"])
            yield feeds

    monkeypatch.setattr(statistics, "_batches", spy)
    result = spa_compiler.prune(str(path), ratio=0.25, criterion="obspa", samples=16,
                                input_shapes={"ids": (1, 24)})
    assert result.report["fidelity"]["rel_error"] is not None  # measured on the dense run's reference
    measured = result.compiled.dense.measurement.inputs.batches
    assert {b["ids"].shape[1] for b in measured} == {24} and {b["ids"].shape[0] for b in measured} == {8}
    assert seen and {ids.shape[1] for ids in seen} == {24}  # statistics at the given sequence length
    for ids in [b["ids"] for b in measured] + seen:
        assert ids.min() >= 0 and ids.max() < VOCAB  # within the table, in every stage


def test_compiled_spec_carries_the_input_kinds():
    compiled = compile_model(_tagger())
    (spec,) = compiled.spec.inputs
    assert (spec.kind, spec.high) == ("ids", VOCAB)
