"""Hostile inputs, round two (issue 14): nothing lost, never quietly wrong.

Each test reproduces one finding of the adversarial campaign through the CLI:
the user's files stay byte-identical, a refusal is one line with exit 2, and
nothing is left next to the output.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from spa_compiler.cli import main


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _digest(*paths) -> dict:
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def _one_line_refusal(result, code: int = 2) -> str:
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("[spac]")]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("spac: error:"), result.output
    return lines[0]


def _leftovers(folder: Path, *expected) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in {Path(e).name for e in expected})


@pytest.fixture
def model(tmp_path, demo_path) -> Path:
    path = tmp_path / "in.onnx"
    shutil.copy(demo_path, path)
    return path


def _external_copy(source: Path, folder: Path, name: str, data_name: str) -> Path:
    """*source* saved as *folder*/*name* with every weight in *folder*/*data_name*."""
    proto = onnx.load(str(source))
    path = folder / name
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=0)
    return path


# D1: --report never destroys a model, and a report that cannot be written leaves no model behind

@pytest.mark.parametrize("target", ["input", "output", "output_data"])
def test_report_on_a_model_file_is_refused_before_any_work(tmp_path, model, target):
    out = tmp_path / "out.onnx"
    report = {"input": model, "output": out, "output_data": tmp_path / "out.onnx.data"}[target]
    before = _digest(model)
    result = _run("prune", model, "-o", out, "--report", report)
    line = _one_line_refusal(result)
    assert "report" in line
    assert "[spac]" not in result.output  # refused before any work
    assert _digest(model) == before
    assert not out.exists()


def test_report_equal_to_calib_is_refused(tmp_path, model):
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.zeros((2, 3, 32, 32), np.float32))
    before = _digest(calib)
    result = _run("prune", model, "-o", tmp_path / "out.onnx", "--calib", calib, "--report", calib)
    _one_line_refusal(result)
    assert _digest(calib) == before


def test_report_in_a_missing_folder_leaves_no_model(tmp_path, model):
    out = tmp_path / "out.onnx"
    result = _run("prune", model, "-o", out, "--report", tmp_path / "nowhere" / "r.json")
    assert "does not exist" in _one_line_refusal(result)
    assert _leftovers(tmp_path, model) == []


def test_report_that_fails_to_write_leaves_no_model(tmp_path, model, monkeypatch):
    """The report is part of the output's transaction: if it cannot be written, neither is the model."""
    import json

    out, report = tmp_path / "out.onnx", tmp_path / "r.json"

    def broken(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", broken)
    monkeypatch.setattr(json, "dumps", broken)
    result = _run("prune", model, "-o", out, "--report", report)
    assert result.exit_code == 2, result.output
    assert _leftovers(tmp_path, model) == []


def test_report_is_written_with_the_model(tmp_path, model):
    import json

    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    result = _run("prune", model, "-o", out, "--report", report)
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["output"] == str(out)
    assert _leftovers(tmp_path, model, out, report) == []


# D2: the output's weights file never replaces a file the input reads

def test_output_data_file_equal_to_input_data_is_refused(tmp_path, demo_path):
    source = _external_copy(demo_path, tmp_path, "in.onnx", "out.onnx.data")
    before = _digest(source, tmp_path / "out.onnx.data")
    result = _run("prune", source, "-o", tmp_path / "out.onnx")
    assert "out.onnx.data" in _one_line_refusal(result)
    assert _digest(source, tmp_path / "out.onnx.data") == before
    assert not (tmp_path / "out.onnx").exists()


def test_output_data_file_hard_linked_to_input_data_is_refused(tmp_path, demo_path):
    source = _external_copy(demo_path, tmp_path, "in.onnx", "in.onnx.data")
    os.link(tmp_path / "in.onnx.data", tmp_path / "out.onnx.data")
    before = _digest(source, tmp_path / "in.onnx.data")
    result = _run("prune", source, "-o", tmp_path / "out.onnx")
    _one_line_refusal(result)
    assert _digest(source, tmp_path / "in.onnx.data") == before


def test_output_equal_to_input_data_file_is_refused(tmp_path, demo_path):
    source = _external_copy(demo_path, tmp_path, "in.onnx", "weights.bin")
    before = _digest(source, tmp_path / "weights.bin")
    result = _run("prune", source, "-o", tmp_path / "weights.bin")
    _one_line_refusal(result)
    assert _digest(source, tmp_path / "weights.bin") == before


# D3: never replace something that is not a regular file

def test_output_fifo_is_refused_and_kept(tmp_path, model):
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    result = _run("prune", model, "-o", fifo)
    assert "not a regular file" in _one_line_refusal(result)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_output_data_fifo_is_refused_and_kept(tmp_path, demo_path):
    source = _external_copy(demo_path, tmp_path, "in.onnx", "in.onnx.data")
    os.mkfifo(tmp_path / "out.onnx.data")
    result = _run("prune", source, "-o", tmp_path / "out.onnx")
    assert "not a regular file" in _one_line_refusal(result)
    assert stat.S_ISFIFO(os.stat(tmp_path / "out.onnx.data").st_mode)


def test_report_fifo_is_refused(tmp_path, model):
    fifo = tmp_path / "r.json"
    os.mkfifo(fifo)
    result = _run("prune", model, "-o", tmp_path / "out.onnx", "--report", fifo)
    assert "not a regular file" in _one_line_refusal(result)
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can replace /dev/null")
@pytest.mark.parametrize("device", ["/dev/null", "/dev/full"])
def test_output_device_is_refused_as_root(model, device):
    before = os.stat(device)
    result = _run("prune", model, "-o", device)
    assert "not a regular file" in _one_line_refusal(result)
    after = os.stat(device)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino


# Staging folders of a killed run are cleaned up by the next write

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_stage_of_a_dead_process_is_removed(tmp_path, model):
    from spa_compiler.modelio import stage_prefix

    stale = tmp_path / (stage_prefix(tmp_path / "out.onnx", _dead_pid()) + "abc")
    stale.mkdir()
    (stale / "out.onnx.data").write_bytes(b"x" * 1000)
    alive = tmp_path / (stage_prefix(tmp_path / "out.onnx", os.getppid()) + "def")  # a live owner
    alive.mkdir()
    result = _run("prune", model, "-o", tmp_path / "out.onnx")
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    assert alive.exists()


def test_sigkill_mid_write_is_cleaned_by_the_next_run(tmp_path, model):
    """Kill a real run with SIGKILL while it writes, then run again: no stage remains."""
    out = tmp_path / "out.onnx"
    script = ("import sys, time\n"
              "import spa_compiler.modelio as m\n"
              "real = m.write_graph\n"
              "def slow(*a, **k):\n"
              "    r = real(*a, **k)\n"
              "    open(sys.argv[2], 'w').close()\n"
              "    time.sleep(60)\n"
              "    return r\n"
              "m.write_graph = slow\n"
              "import spa_compiler.api as api\n"
              "api.write_graph = slow\n"
              "from spa_compiler.cli import main\n"
              "main(['prune', sys.argv[1], '-o', sys.argv[3], '--no-verify'])\n")
    marker = tmp_path / "written"
    proc = subprocess.Popen([sys.executable, "-c", script, str(model), str(marker), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert marker.exists(), "the run never reached the write"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any(p.name.startswith(".out.onnx.") for p in tmp_path.iterdir())  # the kill left a stage
    result = _run("prune", model, "-o", out)
    assert result.exit_code == 0, result.output
    assert _leftovers(tmp_path, model, out, marker) == []


# D4, D6: hostile graphs are refused with exit 2 and one line, before anything large is allocated

def _chain(middle: str = "Relu", middle_inputs=("a",), extra_nodes=(), extra_inits=(), output="y",
           w2_shape=(4, 8, 1, 1), functions=(), conv_attrs=None) -> onnx.ModelProto:
    """x -> Conv -> <middle> -> Conv -> y, with whatever a hostile variant adds."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(w2_shape).astype(np.float32), "w2"), *extra_inits]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1, 1, 1, 1], **(conv_attrs or {})),
             helper.make_node(middle, list(middle_inputs), ["b"], name="mid"),
             helper.make_node("Conv", ["b", "w2"], ["y"], name="c2"), *extra_nodes]
    graph = helper.make_graph(nodes, "hostile", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 3, 8, 8))],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                              functions=list(functions))
    model.ir_version = 8
    return model


def _string_weight() -> onnx.ModelProto:
    model = _chain()
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_type = onnx.TensorProto.STRING
    w.string_data.extend([b"a"] * int(np.prod(w.dims)))
    return model


def _string_raw_data() -> onnx.ModelProto:
    model = _chain()
    model.graph.initializer[0].data_type = onnx.TensorProto.STRING
    return model


def _huge_constant_node() -> onnx.ModelProto:
    from onnx import helper

    tensor = onnx.TensorProto(name="k", data_type=onnx.TensorProto.FLOAT, dims=[2**40], raw_data=b"\0" * 4)
    const = helper.make_node("Constant", [], ["k"], name="huge", value=tensor)
    return _chain(extra_nodes=[const, helper.make_node("ReduceSum", ["k"], ["ks"], name="rs", keepdims=0),
                               helper.make_node("Add", ["y", "ks"], ["y2"], name="add")], output="y2")


def _reshape_to_huge() -> onnx.ModelProto:
    from onnx import helper, numpy_helper

    nodes = [helper.make_node("Reshape", ["small", "shape"], ["r"], name="reshape"),
             helper.make_node("Expand", ["small1", "big"], ["e"], name="expand"),
             helper.make_node("ReduceSum", ["r"], ["rs"], name="rs", keepdims=0),
             helper.make_node("ReduceSum", ["e"], ["es"], name="es", keepdims=0),
             helper.make_node("Add", ["y", "rs"], ["y1"], name="add1"),
             helper.make_node("Add", ["y1", "es"], ["y2"], name="add2")]
    inits = [numpy_helper.from_array(np.zeros(4, np.float32), "small"),
             numpy_helper.from_array(np.zeros(1, np.float32), "small1"),
             numpy_helper.from_array(np.array([2**40], np.int64), "shape"),
             numpy_helper.from_array(np.array([2**20, 2**20], np.int64), "big")]
    return _chain(extra_nodes=nodes, extra_inits=inits, output="y2")


def _recursive_function() -> onnx.ModelProto:
    from onnx import helper

    body = helper.make_node("F", ["x"], ["y"], domain="local", name="again")
    function = helper.make_function("local", "F", ["x"], ["y"], [body], [helper.make_opsetid("", 17)])
    call = helper.make_node("F", ["a"], ["b"], domain="local", name="mid")
    model = _chain()
    model.graph.node[1].CopyFrom(call)
    model.functions.append(function)
    return model


def _reversed_long_chain() -> onnx.ModelProto:
    from onnx import helper

    model = _chain()
    nodes = [helper.make_node("Relu", [f"r{i}"], [f"r{i + 1}"], name=f"relu{i}") for i in range(2000)]
    nodes[0].input[0] = "y"
    nodes[-1].output[0] = "z"
    model.graph.node.extend(reversed(nodes))
    model.graph.output[0].name = "z"
    return model


def _negative_offset(folder: Path) -> onnx.ModelProto:
    model = _chain()
    w = model.graph.initializer[0]
    (folder / "w.bin").write_bytes(w.raw_data)
    w.ClearField("raw_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", "-64"), ("length", str(8 * 27 * 4))):
        w.external_data.add(key=key, value=value)
    return model


def _nan_weight(value=float("nan")) -> onnx.ModelProto:
    from onnx import numpy_helper

    model = _chain()
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.full((8, 3, 3, 3), value, np.float32), "w1"))
    return model


def _bias_of_wrong_length() -> onnx.ModelProto:
    from onnx import numpy_helper

    model = _chain()
    model.graph.node[0].input.append("bias")  # c1 has 8 output channels
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(5, np.float32), "bias"))
    return model


def _empty_pads() -> onnx.ModelProto:
    model = _chain()
    pads = next(a for a in model.graph.node[0].attribute if a.name == "pads")
    del pads.ints[:]
    return model


HOSTILE = {
    "bias_of_wrong_length": (lambda _f: _bias_of_wrong_length(), "bias"),
    "group_not_dividing_channels": (lambda _f: _chain(conv_attrs={"group": 3}), "group 3"),
    "empty_list_attribute": (lambda _f: _empty_pads(), "empty list"),
    "string_weight": (lambda _f: _string_weight(), "w1"),
    "string_raw_data": (lambda _f: _string_raw_data(), "w1"),
    "constant_node_2**40": (lambda _f: _huge_constant_node(), "huge"),
    "reshape_expand_to_2**40": (lambda _f: _reshape_to_huge(), "reshape"),
    "self_recursive_function": (lambda _f: _recursive_function(), "F"),
    "reversed_2000_node_chain": (lambda _f: _reversed_long_chain(), ""),
    "negative_external_offset": (_negative_offset, "offset"),
    "weight_shapes_disagree": (lambda _f: _chain(w2_shape=(4, 5, 1, 1)), "c2"),
    "conv_weight_of_rank_1": (lambda _f: _chain(w2_shape=(8,)), "rank 1"),
    "group_is_a_string_list": (lambda _f: _chain(conv_attrs={"group": ["a"]}), "group"),
    "all_nan_weight": (lambda _f: _nan_weight(), "w1"),
    "all_inf_weight": (lambda _f: _nan_weight(float("inf")), "w1"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_model_is_refused_with_exit_2(tmp_path, case):
    build, needle = HOSTILE[case]
    path = tmp_path / "m.onnx"
    path.write_bytes(build(tmp_path).SerializeToString())
    out = tmp_path / "out.onnx"
    result = _run("prune", path, "-o", out)
    if case == "reversed_2000_node_chain" and result.exit_code == 0:
        return  # a valid model: pruning it is the right answer, a recursion error is not
    line = _one_line_refusal(result)
    assert needle in line
    assert not out.exists()


def test_nan_weights_with_force_are_a_warning(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(_nan_weight().SerializeToString())
    result = _run("prune", path, "-o", tmp_path / "out.onnx", "--force")
    assert result.exit_code == 0, result.output
    assert "spac: warning:" in result.output and "w1" in result.output


# D5: verify and bench read external-data models (spac's own outputs included)

def test_verify_and_bench_accept_external_data_models(tmp_path, demo_path):
    source = _external_copy(demo_path, tmp_path, "in.onnx", "in.onnx.data")
    out = tmp_path / "out.onnx"
    assert _run("prune", source, "-o", out).exit_code == 0
    assert (tmp_path / "out.onnx.data").exists()
    result = _run("verify", source, out)
    assert result.exit_code == 0, result.output
    result = _run("bench", source, out, "--runs", "3", "--warmup", "0")
    assert result.exit_code == 0, result.output


# D8: one line, nothing before it

def test_output_folder_is_one_line(tmp_path, model):
    result = _run("prune", model, "-o", tmp_path)
    assert "folder" in _one_line_refusal(result)


def test_report_folder_is_one_line(tmp_path, model):
    result = _run("prune", model, "-o", tmp_path / "out.onnx", "--report", tmp_path)
    _one_line_refusal(result)
    assert not (tmp_path / "out.onnx").exists()


def test_bad_option_is_one_line(model):
    result = _run("prune", model, "--ratio", "abc")
    _one_line_refusal(result)


def test_missing_input_prints_nothing_before_the_error(tmp_path):
    result = _run("prune", tmp_path / "missing.onnx", "-o", tmp_path / "out.onnx")
    assert result.output.strip().splitlines() == [result.output.strip()]
    assert "no such file" in _one_line_refusal(result)


def test_numpy_warnings_do_not_reach_the_user(tmp_path, model, monkeypatch):
    import spa_compiler.api as api
    from spa_compiler.errors import UsageError

    def noisy(*_args, **_kwargs):
        np.log(np.zeros(3))  # RuntimeWarning: divide by zero
        np.float32(1e38) * np.float32(1e38)  # RuntimeWarning: overflow
        raise UsageError("bad input")

    monkeypatch.setattr(api, "compile_model", noisy)
    result = _run("prune", model, "-o", tmp_path / "out.onnx")
    assert "Warning" not in result.output
    assert _one_line_refusal(result) == "spac: error: bad input"


# D10: --no-verify still refuses a model that fails onnx.checker

def test_no_verify_still_runs_the_checker(tmp_path, model, monkeypatch):
    import spa_compiler.api as api

    real = api.write_graph

    def broken(graph, meta, stage, external):
        written = real(graph, meta, stage, external)
        proto = onnx.load(str(stage.model_path))
        proto.graph.node[0].op_type = "NoSuchOperator"
        stage.model_path.write_bytes(proto.SerializeToString())
        return written

    monkeypatch.setattr(api, "write_graph", broken)
    result = _run("prune", model, "-o", tmp_path / "out.onnx", "--no-verify")
    assert "onnx.checker" in _one_line_refusal(result, code=3)
    assert _leftovers(tmp_path, model) == []


# Also: FIFO and hard-linked data files, broken pipes, bench runs, verify's file names, --quiet

def test_fifo_data_file_is_not_a_regular_file(tmp_path, demo_path):
    source = _external_copy(demo_path, tmp_path, "in.onnx", "in.onnx.data")
    (tmp_path / "in.onnx.data").unlink()
    os.mkfifo(tmp_path / "in.onnx.data")
    result = _run("prune", source, "-o", tmp_path / "out.onnx")
    assert "not a regular file" in _one_line_refusal(result)


def test_hard_linked_data_file_is_refused(tmp_path, demo_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = tmp_path / "model"
    folder.mkdir()
    source = _external_copy(demo_path, outside, "in.onnx", "w.data")
    shutil.copy(source, folder / "in.onnx")
    os.link(outside / "w.data", folder / "w.data")
    result = _run("prune", folder / "in.onnx", "-o", folder / "out.onnx")
    assert "hard links" in _one_line_refusal(result)


def test_closed_stdout_is_not_an_internal_error(demo_path):
    proc = subprocess.Popen([sys.executable, "-m", "spa_compiler.cli", "groups", str(demo_path), "--all"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `| head -1` exiting before spac writes
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (0, 141), err
    assert err.decode().strip() == ""


def test_bench_reports_every_run_and_true_percentiles(model):
    import json

    result = _run("bench", model, model, "--runs", "200", "--warmup", "0", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    assert data["a"]["runs"] == data["b"]["runs"] == 200


def test_timing_percentiles_are_numpy_percentiles():
    from spa_compiler.runtime import summarize

    samples = list(np.random.default_rng(0).exponential(size=200))
    timing = summarize(samples)
    assert timing.runs == 200
    assert timing.p10_ms == pytest.approx(np.percentile(samples, 10))
    assert timing.p90_ms == pytest.approx(np.percentile(samples, 90))
    assert timing.median_ms == pytest.approx(np.median(samples))


def test_verify_errors_name_the_file(tmp_path, model):
    other = tmp_path / "other.onnx"
    other.write_bytes(_chain().SerializeToString())
    result = _run("verify", model, other)
    assert str(other) in _one_line_refusal(result, code=3)


def test_quiet_prints_no_summary(tmp_path, model):
    result = _run("prune", model, "-o", tmp_path / "out.onnx", "--quiet")
    assert result.exit_code == 0, result.output  # warnings only (e.g. a fidelity warning), no summary
    assert all(line.startswith("spac: warning:") for line in result.output.splitlines()), result.output
    result = _run("prune", tmp_path / "missing.onnx", "--quiet")
    assert "no such file" in _one_line_refusal(result)


def test_invalid_utf8_op_type_is_refused(tmp_path):
    data = _chain().SerializeToString()
    assert data.count(b"Relu") == 1
    path = tmp_path / "m.onnx"
    path.write_bytes(data.replace(b"Relu", b"R\xffl\xfe"))
    result = _run("prune", path, "-o", tmp_path / "out.onnx")
    assert "UTF-8" in _one_line_refusal(result)


def test_invalid_utf8_in_any_text_field_is_refused(tmp_path):
    """Not only names: a producer name or doc string of bytes would fail when the output is written."""
    model = _chain()
    model.producer_name = "spa-compiler-builders"
    data = model.SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(data.replace(b"spa-compiler-builders", b"sp\x9f-compiler-builders"))
    line = _one_line_refusal(_run("prune", path, "-o", tmp_path / "out.onnx"))
    assert "producer_name is not valid UTF-8" in line and not (tmp_path / "out.onnx").exists()


def test_model_failing_in_the_statistics_run_is_bad_input(tmp_path):
    """onnxruntime refusing to run the input while OBSPA collects statistics is exit 2, not an internal error."""
    from onnx import helper, numpy_helper

    bad = [numpy_helper.from_array(np.array([7, -1], np.int64), "bad_shape")]
    model = _chain(extra_nodes=[helper.make_node("Reshape", ["y", "bad_shape"], ["z"], name="bad_reshape")],
                   extra_inits=bad, output="z")
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    result = _run("prune", path, "-o", tmp_path / "out.onnx", "--criterion", "obspa", "--samples", "4")
    line = _one_line_refusal(result)  # since D7 the dense model is run first, so it is refused before statistics
    assert "m.onnx" in line and ("onnxruntime cannot load the input" in line or "does not run in onnxruntime" in line)


def test_empty_list_attributes_survive_the_round_trip(tmp_path):
    """``axes=[]`` is valid ONNX (ReduceMean over every axis) but gs's exporter cannot type an empty list:
    the compiler must write it back as the empty INTS it was, not fail as an internal error."""
    from onnx import helper

    reduce_all = helper.make_node("ReduceMean", ["y"], ["m"], name="mean_all", keepdims=1)
    reduce_all.attribute.append(onnx.AttributeProto(name="axes", type=onnx.AttributeProto.INTS))
    model, path = _chain(extra_nodes=[reduce_all], output="m"), tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    result = _run("prune", path, "-o", tmp_path / "out.onnx", "--ratio", "0.25")
    assert result.exit_code == 0, result.output
    pruned = onnx.load(str(tmp_path / "out.onnx"))
    node = next(n for n in pruned.graph.node if n.name == "mean_all")
    axes = next(a for a in node.attribute if a.name == "axes")
    assert axes.type == onnx.AttributeProto.INTS and list(axes.ints) == []
