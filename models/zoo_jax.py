"""JAX/Flax zoo: small Flax (NNX) models exported by jax2onnx (``pip install -e ".[zoo-jax]"``).

jax2onnx writes JAX primitives one by one (``dot_general`` as MatMul/Einsum,
convolutions with NHWC<->NCHW Transposes, LayerNorm decomposed or fused), so
these graphs look like no torch export.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from models.zoo import ZooModel

FRAMEWORK = "jax"
REQUIRES = ("jax", "flax", "jax2onnx")
MODELS = ("mlp", "cnn", "resnet_block", "attention")


def build(name: str) -> Callable[[Path], None]:
    def run(path: Path) -> None:
        from models import jax_models

        jax_models.export(name, path)
    return run


def entries() -> list[ZooModel]:
    return [ZooModel(name, FRAMEWORK, build(name), REQUIRES) for name in MODELS]


TINY = MODELS  # all small: every one is committed for the tests
