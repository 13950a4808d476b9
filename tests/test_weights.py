"""Weights kept on disk: external data is mapped read-only, pruned like embedded weights, and written afresh."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from spa_compiler.cli import main
from spa_compiler.weights import ALIGNMENT


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _external_copy(model_path, folder: Path) -> Path:
    """*model_path* re-saved with every initializer in one external data file."""
    folder.mkdir()
    model = onnx.load(str(model_path))
    path = folder / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    return path


def _weights(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("criterion", ["l2", "obspa"])
def test_external_weights_prune_exactly_like_embedded_ones(tmp_path, demo_path, criterion):
    """Same plan, same compensation, same bytes: only where the weights live differs (input untouched)."""
    source = _external_copy(demo_path, tmp_path / "in")
    before = _digest(source.parent)
    embedded, external = tmp_path / "a.onnx", tmp_path / "b" / "pruned.onnx"
    external.parent.mkdir()
    for model, out in ((demo_path, embedded), (source, external)):
        result = _run("prune", model, "-o", out, "--criterion", criterion, "--ratio", "0.5")
        assert result.exit_code == 0, result.output
    assert _digest(source.parent) == before
    assert sorted(os.listdir(external.parent)) == ["pruned.onnx", "pruned.onnx.data"]
    a, b = _weights(embedded), _weights(external)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    stored = onnx.load(str(external), load_external_data=False).graph.initializer
    offsets = [int(e.value) for t in stored for e in t.external_data if e.key == "offset"]
    assert offsets and all(o % ALIGNMENT == 0 for o in offsets)


def test_external_output_is_byte_identical_across_runs(tmp_path, demo_path):
    source = _external_copy(demo_path, tmp_path / "in")
    digests = []
    for k in range(2):
        out = tmp_path / f"run{k}" / "pruned.onnx"
        out.parent.mkdir()
        assert _run("prune", source, "-o", out, "--seed", "1").exit_code == 0
        digests.append(list(_digest(out.parent).values()))
    assert digests[0] == digests[1]


@pytest.mark.parametrize("damage", ["missing", "truncated", "symlink_out", "absolute"])
def test_bad_external_data_is_refused_before_any_work(tmp_path, demo_path, damage):
    source = _external_copy(demo_path, tmp_path / "in")
    data = source.parent / "weights.bin"
    if damage == "missing":
        data.unlink()
    elif damage == "truncated":
        data.write_bytes(data.read_bytes()[:100])
    else:
        outside = tmp_path / "elsewhere.bin"
        data.rename(outside)
        model = onnx.load(str(source), load_external_data=False)
        if damage == "symlink_out":
            data.symlink_to(outside)
        else:
            for tensor in model.graph.initializer:
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = str(outside)
            source.write_bytes(model.SerializeToString())
    out = tmp_path / "out.onnx"
    result = _run("prune", source, "-o", out)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if not line.startswith("[spac]")]
    assert len(lines) == 1 and lines[0].startswith(f"spac: error: {source}"), result.output
    assert {"missing": "not found", "truncated": "past the end", "symlink_out": "outside the model's folder",
            "absolute": "outside the model's folder"}[damage] in lines[0]
    assert not out.exists()


def test_mapped_weights_are_read_only(tmp_path, demo_path):
    """A pass that wrote into a weight in place would write through to the user's file: it must fail instead."""
    from spa_compiler.pipeline import compile_model
    from spa_compiler.weights import MappedValues

    compiled = compile_model(_external_copy(demo_path, tmp_path / "in"))
    mapped = [t for t in compiled.graph.tensors().values() if isinstance(getattr(t, "_values", None), MappedValues)]
    assert mapped, "external initializers should stay mapped after compilation"
    with pytest.raises(ValueError):
        mapped[0].values[...] = 0
