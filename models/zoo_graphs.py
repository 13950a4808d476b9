"""Hand-built graphs of the kinds real exporters write and the other zoos do not reach: If/Loop/Scan
bodies with weights inside (``models/control_flow.py``), recurrent cells unrolled per time step
(``models/unrolled.py``) and onnxruntime's contrib quantized ops (``models/quantized_contrib.py``).  Built with onnx.helper only, so every environment runs them
(``python tools/coverage.py --framework onnx.helper``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import onnx

from models.zoo import ZooModel

FRAMEWORK = "onnx.helper"


def _builder(make: Callable[[], onnx.ModelProto]) -> Callable[[Path], None]:
    def build(path: Path) -> None:
        onnx.save(make(), str(path))
    return build


def models() -> dict[str, Callable[[], onnx.ModelProto]]:
    from models.control_flow import CONTROL_FLOW_MODELS, if_mismatch
    from models.quantized_contrib import matmul_nbits, qlinear_concat
    from models.unrolled import UNROLLED_MODELS

    return {**CONTROL_FLOW_MODELS, "if_mismatch": if_mismatch, **UNROLLED_MODELS, "matmul_nbits": matmul_nbits,
            "matmul_nbits_symmetric": lambda: matmul_nbits(True), "qlinear_concat": qlinear_concat}


def entries() -> list[ZooModel]:
    return [ZooModel(name, FRAMEWORK, _builder(make), ("onnx",)) for name, make in models().items()]
