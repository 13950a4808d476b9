"""spa-compiler: structurally prune any ONNX model (Structurally Prune Anything).

    import spa_compiler
    result = spa_compiler.prune("model.onnx", ratio=0.5, criterion="l2", output="pruned.onnx")
    print(result.report["macs"])
"""
from .api import PruneResult, prune
from .errors import SpacError

__version__ = "0.1.0"
__all__ = ["prune", "PruneResult", "SpacError", "__version__"]
