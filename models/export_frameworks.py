"""Write the small committed exports of every non-torch framework into ``models/frameworks/``.

Why: ``tests/test_frameworks.py`` must prune real tf2onnx, jax2onnx,
paddle2onnx and skl2onnx output in every CI run, without installing
TensorFlow, JAX, Paddle or scikit-learn.  Each framework module of the zoo
(``models/zoo_<framework>.py``) names its ``TINY`` models; this script builds
them with the zoo's own builder and writes them as *weightless skeletons*
(:mod:`models.skeleton`) when their weights would make the file large.
Run it from the framework's own environment, one framework at a time::

    ../venv-skl/bin/python models/export_frameworks.py sklearn      # pip install -e ".[zoo-sklearn]"
    ../venv-tf/bin/python models/export_frameworks.py keras         # pip install -e ".[zoo-tf]"
    ../venv-jax/bin/python models/export_frameworks.py jax          # pip install -e ".[zoo-jax]"
    ../venv-paddle/bin/python models/export_frameworks.py paddle    # pip install -e ".[zoo-paddle]"
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from models.skeleton import strip_weights  # noqa: E402

OUT = Path(__file__).resolve().parent / "frameworks"
SKELETON_ABOVE = 64 * 1024  # bytes: larger exports are committed without their (random) weights
MAX_BYTES = 200 * 1024


def constants_as_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Move tensor-valued ``Constant`` nodes (paddle2onnx, jax2onnx) into initializers so they can be stripped."""
    kept = []
    for node in model.graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is None:
            kept.append(node)
            continue
        model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(value), node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def export(framework: str, names: list[str] | None = None) -> list[Path]:
    """Build the framework's TINY models and write them (skeletons when large); returns the paths."""
    module = importlib.import_module(f"models.zoo_{framework}")
    entries = {e.name: e for e in module.entries()}
    folder = OUT / framework
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names or module.TINY:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.onnx"
            entries[name].build(path)
            model = onnx.load(str(path))
        if model.ByteSize() > SKELETON_ABOVE:
            model = strip_weights(constants_as_initializers(model))
        target = folder / f"{name}.onnx"
        onnx.save(model, str(target))
        size = target.stat().st_size
        if size > MAX_BYTES:
            raise SystemExit(f"{target}: {size} bytes, more than the {MAX_BYTES} a committed test model may take")
        print(f"wrote {target} ({size / 1024:.0f} kB)")
        written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("framework", choices=["keras", "jax", "paddle", "sklearn"])
    parser.add_argument("names", nargs="*", help="default: the module's TINY list")
    args = parser.parse_args()
    export(args.framework, args.names or None)


if __name__ == "__main__":
    main()
