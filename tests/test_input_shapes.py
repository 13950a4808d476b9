"""Input shapes given or chosen once (inputspec), dynamic dims kept, external data analysed like embedded data."""
from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from models.dynamic_shapes import detector, measured_macs, paddle_classifier, time_distributed
from spa_compiler import inputspec
from spa_compiler.api import prune
from spa_compiler.cli import main
from spa_compiler.cost import totals
from spa_compiler.errors import UsageError
from spa_compiler.oracle import masked_model
from spa_compiler.pipeline import apply_plan, compile_model, score_groups
from spa_compiler.plan import PlanOptions, make_plan
from spa_compiler.shapes import _time_limit, _TimeUp, concrete_shapes
from spa_compiler.runtime import session


def _save(model: onnx.ModelProto, path) -> str:
    onnx.save(model, str(path))
    return str(path)


def _run(model, dims, seed: int = 0) -> list[np.ndarray]:
    sess = session(model)
    x = np.random.default_rng(seed).standard_normal(dims).astype(np.float32)
    return sess.run(None, {sess.get_inputs()[0].name: x})


# --- parsing and choosing -------------------------------------------------------------------------------------------

def test_parse_input_shapes_trtexec_convention():
    assert inputspec.parse_input_shapes(["images:1x3x320x320"]) == {"images": (1, 3, 320, 320)}
    assert inputspec.parse_input_shapes(["input:0:1x224x224x3"]) == {"input:0": (1, 224, 224, 3)}
    assert inputspec.parse_input_shapes(["a:1x3,b:2x16"]) == {"a": (1, 3), "b": (2, 16)}
    assert inputspec.parse_input_shapes({"images": (1, 3, 64, 64)}) == {"images": (1, 3, 64, 64)}
    for bad in (["images"], ["images:1xAx3"], ["images:1x0x3"], ["a:1", "a:2"]):
        with pytest.raises(UsageError):
            inputspec.parse_input_shapes(bad)


def test_chosen_dims_never_one_for_space_and_shared_names():
    f32, i64 = np.dtype(np.float32), np.dtype(np.int64)
    spec = inputspec.choose([("img", ("N", 3, "H", "W"), f32), ("nhwc", ("unk__1", "h", "w", 3), f32),
                             ("ids", ("batch", "seq"), i64), ("mask", ("batch", "seq"), i64)])
    shapes = spec.shapes()
    assert shapes["img"] == (1, 3, 224, 224) and shapes["nhwc"] == (1, 224, 224, 3)
    assert shapes["ids"] == shapes["mask"] == (1, 16)
    assert spec.with_batch(4).shapes()["ids"] == (4, 16)
    assert inputspec.choose([("img", ("N", 3, "H", "W"), f32)], metadata={"imgsz": "[320, 256]"}).shapes() == \
        {"img": (1, 3, 320, 256)}
    given = inputspec.choose([("ids", ("batch", "seq"), i64), ("mask", ("batch", "seq"), i64)], {"ids": (2, 7)})
    assert given.shapes()["mask"] == (2, 7)  # a given symbol fixes the other inputs that share it
    for bad in ({"img": (1, 3, 8)}, {"img": (1, 4, 8, 8)}, {"nope": (1,)}):
        with pytest.raises(UsageError):
            inputspec.choose([("img", ("N", 3, "H", "W"), f32)], bad)


# --- the dense model runs first --------------------------------------------------------------------------------------

def test_detector_that_needs_multiples_of_64_gets_a_size_it_runs_at(tmp_path):
    path = _save(detector(levels=6), tmp_path / "det.onnx")
    result = prune(path, ratio=0.3)
    assert result.report["inputs"]["input_shapes"] == "images:1x3x320x320"
    assert result.report["verify"]["input_shapes"] == "images:1x3x320x320"
    meta = _save(detector(levels=6, imgsz=256), tmp_path / "meta.onnx")
    assert prune(meta, ratio=0.3).report["inputs"] == {
        "input_shapes": "images:1x3x256x256", "chosen_by": "metadata imgsz", "dense_run": "ran at batch 1, 2"}


def test_input_the_dense_model_cannot_run_is_a_usage_error_naming_it(tmp_path):
    path = _save(detector(levels=6), tmp_path / "det.onnx")
    result = CliRunner().invoke(main, ["prune", path, "-o", str(tmp_path / "out.onnx"),
                                       "--input-shape", "images:1x3x224x224"])
    assert result.exit_code == 2, result.output
    assert path in result.output and "does not run at --input-shape images:1x3x224x224" in result.output
    assert not (tmp_path / "out.onnx").exists()


def test_input_onnxruntime_cannot_load_is_reported_before_any_work(tmp_path):
    """D7: exit 2 naming the input file, not "pruned model does not run" in a staging folder."""
    model = detector()
    model.graph.node.append(helper.make_node("NoSuchOp", [model.graph.output[1].name], ["extra"], domain="x.custom"))
    model.graph.output.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, None))
    model.opset_import.append(helper.make_opsetid("x.custom", 1))
    path = _save(model, tmp_path / "custom.onnx")
    result = CliRunner().invoke(main, ["prune", path, "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 2, result.output
    assert f"{path}: onnxruntime cannot load the input model" in result.output
    assert "pruned" not in result.output and "/." not in result.output.replace(path, "")


# --- one spec everywhere: cost model, statistics, verification -------------------------------------------------------

def _macs_from_run(model: onnx.ModelProto, hw: int) -> int:
    return measured_macs(model, {"images": np.zeros((1, 3, hw, hw), np.float32)})


@pytest.mark.parametrize("hw", [320, 640])
def test_macs_counted_at_the_input_spec(hw):
    model = detector(levels=5)
    compiled = compile_model(model, input_shapes={"images": (1, 3, hw, hw)})
    _, macs = totals(compiled.graph, concrete_shapes(compiled.graph, compiled.spec))
    assert macs == _macs_from_run(model, hw)


def test_obspa_statistics_run_at_the_chosen_dims(tmp_path):
    path = _save(detector(levels=6, imgsz=128), tmp_path / "det.onnx")  # before: fed 1x1, failed in the run
    result = prune(path, ratio=0.3, criterion="obspa", samples=4)
    assert result.report["inputs"]["input_shapes"] == "images:1x3x128x128"
    assert result.report["hessian"]["source"] == "bnstat" and result.report["verify"]


# --- dynamic dims stay dynamic --------------------------------------------------------------------------------------

def _plan(compiled, ratio=0.4):
    exact = [g for g in compiled.analysis.prunable_groups if g.exact]
    scores = score_groups(compiled, "random", groups=exact)
    plan = make_plan(compiled.analysis, scores, PlanOptions(ratio=ratio))
    plan.removed = {gid: atoms for gid, atoms in plan.removed.items() if gid in scores}
    return plan


def test_detector_prunes_exactly_at_two_batches_and_two_sizes():
    compiled = compile_model(detector(levels=5))
    plan = _plan(compiled)
    assert plan.removed
    pruned, _, _ = apply_plan(compiled, plan)
    masked = masked_model(compiled, plan)
    out = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in pruned.graph.output}
    assert list(out.values())[0] == ["N", 1, "H", "W"]
    for dims in ((1, 3, 224, 224), (3, 3, 320, 256)):
        for want, got in zip(_run(masked, dims), _run(pruned, dims)):
            assert want.shape == got.shape and want.shape[0] == dims[0]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_no_unknown_dims_left_and_dynamic_ones_named_after_the_input():
    compiled = compile_model(detector(levels=5))
    dims = [d for t in compiled.graph.tensors().values() for d in (t.shape or [])]
    assert not [d for d in dims if d is None or (isinstance(d, str) and d.startswith("unk__"))]
    resized = [n for n in compiled.graph.nodes if n.op == "Resize"][-1].outputs[0]
    assert list(resized.shape) == ["N", 1, "H", "W"]


def test_paddle_batch_minus_one_stays_dynamic(tmp_path):
    path = _save(paddle_classifier(), tmp_path / "paddle.onnx")
    result = prune(path, ratio=0.3)
    assert result.report["verify"]["batches"] == [1, 2]
    assert [d.dim_value or d.dim_param for d in result.model.graph.output[0].type.tensor_type.shape.dim][1] == 2
    assert not result.model.graph.output[0].type.tensor_type.shape.dim[0].dim_value > 0
    for batch in (1, 5):
        assert _run(result.model, (batch, 3, 16, 16))[0].shape == (batch, 2)


def test_batches_named_apart_still_factorize_through_a_flatten():
    """tf2onnx names each input's batch afresh; every batch dim is one symbol, so [b, 21, 16] -> [-1, 16] pairs up."""
    compiled = compile_model(time_distributed())
    widths = sorted(g.n_atoms for g in compiled.analysis.prunable_groups)
    assert widths == [12, 16], [g.frozen for g in compiled.analysis.groups]
    plan = _plan(compiled, ratio=0.5)
    pruned, _, _ = apply_plan(compiled, plan)
    masked = masked_model(compiled, plan)
    for batch in (1, 3):
        rng = np.random.default_rng(batch)
        feeds = {n: rng.standard_normal((batch, 21, 8)).astype(np.float32) for n in ("a", "b")}
        np.testing.assert_allclose(session(pruned).run(None, feeds)[0], session(masked).run(None, feeds)[0],
                                   rtol=1e-5, atol=1e-5)


# --- external data --------------------------------------------------------------------------------------------------

def test_external_data_gives_the_same_groups_and_pruned_outputs(tmp_path):
    from models.skeleton import materialize
    from tests.conftest import ROOT

    model = materialize(onnx.load(str(ROOT / "models" / "transformers" / "bert.onnx")))
    inline = _save(model, tmp_path / "inline.onnx")
    (tmp_path / "ext").mkdir()
    external = str(tmp_path / "ext" / "bert.onnx")
    onnx.save_model(model, external, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="bert.onnx.data", size_threshold=0)
    groups = []
    for path in (inline, external):
        result = CliRunner().invoke(main, ["groups", path, "--json"])
        assert result.exit_code == 0, result.output
        groups.append({k: v for k, v in json.loads(result.output).items() if k != "source"})
    assert groups[0] == groups[1] and sum(g["prunable"] for g in groups[0]["groups"]) >= 4
    pruned = [prune(path, ratio=0.5).model for path in (inline, external)]
    sessions = [session(m) for m in pruned]
    feeds = {"input_ids": np.random.default_rng(0).integers(0, 8, (2, 11)).astype(np.int64)}
    for a, b in zip(*(s.run(None, feeds) for s in sessions)):
        np.testing.assert_array_equal(a, b)


# --- the CLI ---------------------------------------------------------------------------------------------------------

def test_cli_verify_and_bench_take_input_shapes(tmp_path):
    path = _save(detector(levels=5), tmp_path / "det.onnx")
    out = str(tmp_path / "det.p.onnx")
    assert CliRunner().invoke(main, ["prune", path, "-o", out, "--ratio", "0.3"]).exit_code == 0
    ok = CliRunner().invoke(main, ["verify", path, out, "--input-shape", "images:2x3x96x128", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["input_shapes"] == "images:2x3x96x128"
    bad = CliRunner().invoke(main, ["verify", path, out, "--input-shape", "images:1x3x100x100"])
    assert bad.exit_code == 2 and path in bad.output
    bench = CliRunner().invoke(main, ["bench", path, out, "--input-shape", "images:1x3x64x64", "--runs", "3",
                                      "--warmup", "0", "--json"])
    assert bench.exit_code == 0, bench.output
    data = json.loads(bench.output)
    assert data["input_shapes"] == "images:1x3x64x64" and data["a"]["macs"] == _macs_from_run(detector(levels=5), 64)


def test_symbolic_inference_is_bounded_in_time():
    start = time.monotonic()
    with pytest.raises(_TimeUp):
        with _time_limit(0.05):
            while time.monotonic() - start < 5:
                pass
    assert time.monotonic() - start < 5
