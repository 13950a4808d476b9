"""Models with external data: the generated Llama-style decoder (50 M parameters) loads, prunes and saves."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner

from models.llama_generator import LlamaShape, write
from spa_compiler.cli import main
from spa_compiler.runtime import random_inputs, session
from spa_compiler.weights import ALIGNMENT


def test_external_data_model_prunes_to_fresh_external_data(tmp_path):
    shape = LlamaShape.for_params(50e6)
    source = write(str(tmp_path / "in" / "model.onnx"), shape)
    before = {p: os.path.getsize(os.path.join(tmp_path / "in", p)) for p in os.listdir(tmp_path / "in")}
    out = tmp_path / "out" / "pruned.onnx"
    out.parent.mkdir()
    result = CliRunner().invoke(main, ["prune", source, "-o", str(out), "--ratio", "0.3", "--json"])
    assert result.exit_code == 0, result.output
    assert {p: os.path.getsize(os.path.join(tmp_path / "in", p)) for p in os.listdir(tmp_path / "in")} == before
    assert sorted(os.listdir(out.parent)) == ["pruned.onnx", "pruned.onnx.data"]
    data_size = os.path.getsize(str(out) + ".data")
    model = onnx.load(str(out), load_external_data=False)
    regions = sorted((int(e["offset"]), int(e["length"])) for e in
                     ({x.key: x.value for x in i.external_data} for i in model.graph.initializer) if e)
    assert all(a + n <= b for (a, n), (b, _) in zip(regions, regions[1:])), "tensors overlap"
    assert data_size == regions[-1][0] + regions[-1][1], "no stale bytes after the last tensor"
    assert all(offset % ALIGNMENT == 0 for offset, _ in regions), "offsets aligned for memory mapping"
    assert data_size < 0.85 * before["model.onnx.data"]
    sess = session(str(out))
    for seq in (3, 9):
        logits = sess.run(None, random_inputs(sess, batch=2, dims={"seq": seq}))[0]
        assert logits.shape == (2, seq, shape.vocab) and np.isfinite(logits).all()


def test_killed_run_leaves_no_output(tmp_path):
    """SIGTERM while the output is being written or verified: exit 130, nothing left in the output folder."""
    source = write(str(tmp_path / "in" / "model.onnx"), LlamaShape.for_params(50e6))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-c", "from spa_compiler.cli import main; main()", "prune", source,
                             "-o", str(out_dir / "pruned.onnx"), "--ratio", "0.3"],
                            cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(out_dir.iterdir()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)  # the staging folder appears when writing starts
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert list(out_dir.iterdir()) == []
