"""Gradient criteria computed in PyTorch on a batch the user passes: ``snip``, ``taylor``, ``grasp``, ``crop``.

Each is a group criterion like ``l2``: a per-element saliency of the module's
parameters (from the gradient ``g`` of the loss, or the Hessian-gradient
product ``Hg``) is read through the provenance of every parameter slice of a
group and summed per atom.  Per element (higher = kept):

- ``snip``  |w * g|: connection sensitivity (SNIP), prune at initialization;
- ``taylor`` w * g summed per atom, then squared: the first-order change of the
  loss when the whole atom goes (Molchanov et al.), for trained models;
- ``grasp`` w * Hg summed per atom: GraSP removes the atoms whose removal
  reduces the gradient flow least (the highest -w * Hg), prune at initialization;
- ``crop``  |w * Hg|: gradient-norm preservation (CroP), prune at initialization.

The saliency is only known inside :func:`spa_compiler.torch.prune` with
``batch=``; the criteria refuse to run anywhere else.
"""
from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from ..criterion import Criterion
from ..errors import UsageError
from ..importance import aggregate, rows
from ..registry import register
from .markers import TensorTable

HESSIAN_CRITERIA = ("grasp", "crop")
TORCH_CRITERIA = ("snip", "taylor", "grasp", "crop")


@dataclass
class Saliency:
    """One value per module tensor element (table order), read per graph constant through its provenance."""

    flat: np.ndarray
    provenance: dict = field(default_factory=dict)  # filled once the real graph is analysed

    def of(self, name: str) -> np.ndarray:
        return self.flat[self.provenance[name]]


CURRENT: ContextVar[Optional[Saliency]] = ContextVar("spa_compiler_torch_saliency", default=None)


def compute_saliency(module: torch.nn.Module, table: TensorTable, criterion: str, batch: tuple,
                     loss_fn: Optional[Callable] = None) -> Saliency:
    """Per-element saliency of *criterion* on ``batch = (inputs, targets)`` (loss: cross-entropy by default)."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise UsageError(f"criterion {criterion} needs batch=(inputs, targets)")
    inputs, targets = batch
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    named = {name: p for name, p in module.named_parameters() if name in table.by_name and p.requires_grad}
    params = list(named.values())
    loss = loss_fn(module(*inputs), targets)
    hessian = criterion in HESSIAN_CRITERIA
    grads = torch.autograd.grad(loss, params, create_graph=hessian)
    if hessian:
        grads = torch.autograd.grad(sum((g * g.detach()).sum() for g in grads), params)
    flat = np.zeros(table.total, dtype=np.float64)
    for (name, param), grad in zip(named.items(), grads):
        slot = table.by_name[name]
        values = (param.detach() * grad.detach()).reshape(-1).double().cpu().numpy()
        flat[slot.offset:slot.offset + slot.size] = np.abs(values) if criterion in ("snip", "crop") else values
    return Saliency(flat)


class _TorchCriterion(Criterion):
    """Sums the saliency of every slice per atom; ``finish`` turns the sums into importances."""

    name = ""

    def finish(self, sums: np.ndarray) -> np.ndarray:
        return sums

    def score(self, ctx, group):
        saliency = CURRENT.get()
        if saliency is None:
            raise UsageError(f"criterion {self.name} is computed in PyTorch: use spa_compiler.torch.prune(module, "
                             "example_inputs, criterion=..., batch=(inputs, targets))")
        slices = ((p, rows(saliency.of(p.tensor), p.axis).sum(axis=1)) for p in group.params)
        return self.finish(aggregate(group, slices, reduce=self.reduce))


@register("criterion", "snip")
class SnipCriterion(_TorchCriterion):
    name = "snip"


@register("criterion", "taylor")
class TaylorCriterion(_TorchCriterion):
    name = "taylor"

    def finish(self, sums):
        return sums * sums


@register("criterion", "grasp")
class GraspCriterion(_TorchCriterion):
    name = "grasp"


@register("criterion", "crop")
class CropCriterion(_TorchCriterion):
    name = "crop"
