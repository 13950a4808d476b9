"""The ``distill`` Hessian source for OBSPA: inputs distilled from the dense model by gradient descent.

Data-free OBSPA needs the second moment ``E[x x^T]`` of every consumer layer's
inputs.  ``bnstat`` gets activations onto BatchNorm's statistics by changing
the graph (BN normalizes by the batch); ``distill`` instead changes the
*inputs*, with gradients of the dense module, until the unchanged eval-mode
model sees what it was trained on (ZeroQ's distilled data, with
DeepInversion's output term).  Starting from N(0, 1) noise, each batch of
inputs ``x`` minimizes, with Adam,

    sum over BatchNorm layers of ||mean_b(x) - running_mean|| + ||std_b(x) - sqrt(running_var)||
    + cross_entropy(model(x), t)   (class-score outputs only: 2-D, more than one column)

where ``mean_b``/``std_b`` are the per-channel batch statistics of the BN's
input and ``t`` are class targets drawn uniformly at random, so the outputs
are confident and spread over the classes.  The statistics of the consumers
are then measured on the distilled inputs through the eval-mode graph,
exactly as with calibration inputs (``calib``): the OBS algebra does not
change, only the inputs do.  A model with neither term (no BatchNorm with
running statistics, no class-score output) has nothing to distil from and is
refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UsageError

STEPS = 200      # Adam steps per batch (ZeroQ: 500; the loss levels off within ~150 on the digits models)
LR = 0.1
BATCH = 64       # BN statistics are matched per batch of this many samples


@dataclass
class Distilled:
    """Distilled inputs (one array per module input) and how well they match."""

    inputs: tuple[np.ndarray, ...]
    bn_layers: int
    class_outputs: bool
    loss_before: float  # objective on the starting noise (mean over batches)
    loss_after: float

    def report(self) -> dict:
        return {"samples": len(self.inputs[0]), "steps": STEPS, "bn_layers": self.bn_layers,
                "class_outputs": self.class_outputs, "loss_before": self.loss_before, "loss_after": self.loss_after}


def distill_inputs(module: torch.nn.Module, example_inputs: tuple, samples: int = 256, seed: int = 0,
                   steps: int = STEPS) -> Distilled:
    """*samples* inputs shaped like *example_inputs* (float tensors) that the eval-mode *module* sees as data."""
    if any(not torch.is_floating_point(t) for t in example_inputs):
        raise UsageError("the distill Hessian source optimizes the inputs: every module input must be a float "
                         "tensor (token ids cannot be distilled; use the default source)")
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             and m.running_mean is not None and m.running_var is not None]
    was_training = module.training
    module.eval()
    seen: list[torch.Tensor] = []
    hooks = [bn.register_forward_pre_hook(lambda m, args: seen.append(_bn_mismatch(m, args[0]))) for bn in norms]
    generator = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            outputs = module(*(t[:2] for t in example_inputs))  # an example batch of two: does it score classes?
        seen.clear()
        class_outputs = isinstance(outputs, torch.Tensor) and outputs.dim() == 2 and outputs.shape[1] > 1
        if not norms and not class_outputs:
            raise UsageError("the distill Hessian source needs BatchNorm layers with running statistics or a "
                             "class-score output (batch x classes) to match; this module has neither")
        chunks, before, after = [], [], []
        for start in range(0, samples, BATCH):
            n = min(BATCH, samples - start)
            x = tuple(torch.randn((n, *t.shape[1:]), generator=generator, dtype=t.dtype).requires_grad_(True)
                      for t in example_inputs)
            targets = torch.randint(outputs.shape[1], (n,), generator=generator) if class_outputs else None
            optimizer = torch.optim.Adam(x, lr=LR)
            for step in range(steps + 1):
                seen.clear()
                loss = _objective(module(*x), seen, targets)
                if step == 0:
                    before.append(loss.item())
                if step == steps:
                    after.append(loss.item())
                    break
                optimizer.zero_grad()
                grads = torch.autograd.grad(loss, x)  # the module's parameters get no gradient
                for t, g in zip(x, grads):
                    t.grad = g
                optimizer.step()
            chunks.append([t.detach().cpu().numpy() for t in x])
    finally:
        for hook in hooks:
            hook.remove()
        module.train(was_training)
    inputs = tuple(np.concatenate(parts).astype(np.float32) for parts in zip(*chunks))
    return Distilled(inputs, len(norms), class_outputs, float(np.mean(before)), float(np.mean(after)))


def _bn_mismatch(bn: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ZeroQ's term: distance of the batch's per-channel mean and std from the BN's running ones."""
    axes = [0] + list(range(2, x.dim()))
    mean = x.mean(dim=axes)
    std = torch.sqrt(x.var(dim=axes, unbiased=False) + bn.eps)
    return torch.linalg.norm(mean - bn.running_mean) + torch.linalg.norm(std - torch.sqrt(bn.running_var + bn.eps))


def _objective(outputs, bn_terms: list[torch.Tensor], targets) -> torch.Tensor:
    loss = sum(bn_terms) if bn_terms else torch.zeros(())
    if targets is not None:
        loss = loss + torch.nn.functional.cross_entropy(outputs, targets)
    return loss
