"""spa-compiler: structurally prune any ONNX model (Structurally Prune Anything).

    import spa_compiler
    result = spa_compiler.prune("model.onnx", ratio=0.5, criterion="l2", output="pruned.onnx")
    print(result.report["macs"])
"""
from .api import PruneResult, prune, prune_with
from .errors import SpacError
from .options import PruneOptions

__version__ = "0.1.0"
__all__ = ["prune", "prune_with", "PruneOptions", "PruneResult", "SpacError", "__version__"]
