"""spa_compiler.torch's files path: real and pruned models in a temporary folder, weights in external data.

ViT-H's export is over protobuf's 2 GiB; a tiny module takes the same path (always without ``output=``,
and with it over a lowered ``EXTERNAL_EXPORT_BYTES``): the result must equal the one-file run's, hold its
weights, and leave no file behind.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import spa_compiler.torch as spt  # noqa: E402
from spa_compiler.modelio import uses_external_data  # noqa: E402
from spa_compiler.torch import export  # noqa: E402
from tests.test_torch import CASES, module_vs_onnx, train_step  # noqa: E402
from tools.torch_roundtrip import randomize_zero_parameters  # noqa: E402

torch_prune = sys.modules["spa_compiler.torch.prune"]  # the package's ``prune`` is the function


def pruned(case: str, monkeypatch, **options):
    """(module, inputs, result, [(real model path, whether it uses external data, output path)])."""
    make, inputs = CASES[case]
    torch.manual_seed(0)
    module = make()
    randomize_zero_parameters(module)
    x = inputs()
    seen: list = []
    original = torch_prune.prune_with

    def spy(model, opts, *args, **kwargs):
        seen.append((Path(model), uses_external_data(model), Path(opts.output)))
        return original(model, opts, *args, **kwargs)

    monkeypatch.setattr(torch_prune, "prune_with", spy)
    return module, x, spt.prune(module, x, ratio=0.5, criterion="obspa", **options), seen


@pytest.mark.parametrize("case", sorted(CASES))
def test_without_output_the_weights_go_through_external_data_files(case, monkeypatch, tmp_path):
    module, x, result, [(real, external, output)] = pruned(case, monkeypatch)
    assert external, "the real model was written with external data"
    assert not real.parent.exists(), "the temporary folder is removed"
    assert not any(t.data_location for t in result.model.graph.initializer), \
        "the result holds its weights (the temporary file is gone)"
    assert output.parent == real.parent and "output" not in result.report
    assert module_vs_onnx(module, x, result.model) < 1e-4
    one_file, _, reference, [(_, external, _)] = pruned(case, monkeypatch, output=str(tmp_path / "p.onnx"))
    assert not external and not uses_external_data(tmp_path / "p.onnx"), "a small output stays one file"
    with torch.no_grad():
        x1 = tuple(t[:1] for t in x)
        np.testing.assert_allclose(module.eval()(*x1).numpy(), one_file.eval()(*x1).numpy(), rtol=1e-5, atol=1e-6)
    assert result.report["macs"] == reference.report["macs"]
    train_step(module, x)


def test_over_the_threshold_an_output_keeps_its_weights_in_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(export, "EXTERNAL_EXPORT_BYTES", 1024)
    out = tmp_path / "pruned.onnx"
    module, x, result, [(real, external, output)] = pruned("convnet", monkeypatch, output=str(out))
    assert external and output == out and not real.parent.exists()
    assert uses_external_data(out) and (tmp_path / "pruned.onnx.data").exists()
    assert result.report["output"] == str(out)
    assert module_vs_onnx(module, x, str(out)) < 1e-4
    assert result.model.graph.initializer[0].data_location, "as from spa_compiler.prune: weights stay in the file"


def test_a_folder_left_by_a_killed_run_is_removed(tmp_path, monkeypatch):
    import subprocess
    import tempfile

    from spa_compiler.modelio import stage_prefix

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f"{stage_prefix(tmp_path / 'spac-torch', dead.pid)}x"
    stale.mkdir()
    (stale / "real.onnx.data").write_bytes(b"0" * 10)
    pruned("convnet", monkeypatch)
    assert not stale.exists() and not list(tmp_path.iterdir()), "the stale folder and this run's are gone"
