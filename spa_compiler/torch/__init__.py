"""Prune a PyTorch module in place: the plan comes from its ONNX export, the cut is applied to its own tensors.

    import spa_compiler.torch as spt
    result = spt.prune(model, torch.randn(1, 3, 224, 224), ratio=0.5)
    result.module  # the same nn.Module object, smaller and trainable
    result.model   # the pruned ONNX model

Needs ``pip install spa-compiler[torch]``; see docs/torch.md.
"""
from . import criteria  # noqa: F401 - registers snip, taylor, grasp, crop
from .prune import TorchPruneResult, prune

__all__ = ["prune", "TorchPruneResult"]
