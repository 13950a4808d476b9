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
