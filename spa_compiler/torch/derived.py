"""Constants a module computes in ``forward`` from its own parameters, channel by channel: cut them at the source.

The graph holds such a constant folded (normalization evaluates the ops on
constants), so it decodes to no module element and its groups would be
frozen.  Some modules compute them per channel: channel *h* of the constant
depends only on hyperplane *h* of a few source parameters (and on tensors
no cut touches).  Cutting channels of the folded constant then equals
cutting those source hyperplanes and letting ``forward`` recompute it.

torchvision ``ShiftedWindowAttentionV2`` computes three per head:
``16 * sigmoid(cpb_mlp(coords))`` gathered per head (head *h* from row *h*
of the MLP's last Linear), ``clamp(logit_scale, max=log 100).exp()``
(elementwise), and the qkv bias with its key third zeroed (elementwise).

An adapter lists a module's derived tensors (value, channel axis, sources);
a folded constant is matched to one only when it sits in that module's
export scope and holds the same values.  It then gets a *pseudo provenance*:
an index array with the constant's channel count on the group's axis and,
per channel, every element of the source hyperplanes, so the ordinary cut
(``find_cuts``) removes whole source rows with the constant's channels.
Its values are never written back (they are recomputed by ``forward``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from ..analysis import DependencyAnalysis
from .export import scope_module
from .markers import TensorTable
from .provenance import Provenance, constants

MATCH_RTOL, MATCH_ATOL = 1e-5, 1e-6  # folding in numpy/onnxruntime vs torch: last-bit differences


@dataclass
class Derived:
    """A tensor a module computes in forward, whose channel *h* along *axis* comes from hyperplane *h* of each
    source (a tensor name relative to the module, and its axis)."""

    value: np.ndarray
    axis: int
    sources: list[tuple[str, int]]


def _is_torchvision_swin_v2(module: nn.Module) -> bool:
    try:
        from torchvision.models.swin_transformer import ShiftedWindowAttentionV2
    except ImportError:
        return False
    return isinstance(module, ShiftedWindowAttentionV2)


def _swin_v2(module: nn.Module) -> list[Derived]:
    """Swin V2's continuous position bias, logit scale and zero-key qkv bias (see torchvision's forward)."""
    last = module.cpb_mlp[-1]
    bias_sources = [(f"{len(module.cpb_mlp) - 1}.{name}", 0) for name in ("weight", "bias")
                    if getattr(last, name, None) is not None]
    derived = [Derived(module.get_relative_position_bias().numpy(), 1, [(f"cpb_mlp.{n}", a) for n, a in bias_sources]),
               Derived(torch.clamp(module.logit_scale, max=math.log(100.0)).exp().numpy(), 0, [("logit_scale", 0)])]
    if module.qkv.bias is not None:
        qkv_bias = module.qkv.bias.clone()
        length = qkv_bias.numel() // 3
        qkv_bias[length:2 * length] = 0
        derived.append(Derived(qkv_bias.numpy(), 0, [("qkv.bias", 0)]))
    return derived


DERIVED_ADAPTERS: list[tuple[Callable[[nn.Module], bool], Callable[[nn.Module], list[Derived]]]] = [
    (_is_torchvision_swin_v2, _swin_v2),
]


def _match(real: np.ndarray, derived: Derived, axis: int) -> bool:
    """True when *real* holds *derived*'s values, with its channel axis at *axis* (leading 1s aside)."""
    value = derived.value
    lead_real = _leading_ones(real.shape)
    lead_value = _leading_ones(value.shape)
    if real.shape[lead_real:] != value.shape[lead_value:] or axis - lead_real != derived.axis - lead_value:
        return False
    return bool(np.allclose(real.reshape(value.shape), value, rtol=MATCH_RTOL, atol=MATCH_ATOL))


def _leading_ones(shape) -> int:
    count = 0
    for n in shape:
        if n != 1:
            break
        count += 1
    return count


def _pseudo_provenance(table: TensorTable, prefix: str, derived: Derived, axis: int) -> Optional[np.ndarray]:
    """Per channel of the constant, the global indices of every source element of that channel; laid out as
    (1, ..., channels, elements) with the channels on *axis*, so the rewrite's ``np.take`` slices it."""
    channels = derived.value.shape[derived.axis]
    rows = []
    for name, source_axis in derived.sources:
        slot = table.by_name.get(prefix + name)
        if slot is None or slot.shape[source_axis] != channels:
            return None
        index = np.arange(slot.offset, slot.offset + slot.size).reshape(slot.shape)
        rows.append(np.moveaxis(index, source_axis, 0).reshape(channels, -1))
    return np.concatenate(rows, axis=1).reshape((1,) * axis + (channels, -1))


def derived_provenance(root: nn.Module, table: TensorTable, graph, analysis: DependencyAnalysis,
                       provenance: Provenance) -> Provenance:
    """Pseudo provenance of the group parameters that are folded derived tensors of an adapted module."""
    real = constants(graph)
    cache: dict[str, list[Derived]] = {}
    found: Provenance = {}
    for group in analysis.prunable_groups:
        for param in group.params:
            if param.tensor in provenance or param.tensor in found or param.tensor not in real:
                continue
            path = scope_module(root, param.tensor)
            adapt = _adapter(root, path)
            if adapt is None:
                continue
            if path not in cache:
                with torch.no_grad():
                    cache[path] = adapt(root.get_submodule(path))
            values = np.asarray(real[param.tensor].values)
            for derived in cache[path]:
                if _match(values, derived, param.axis):
                    pseudo = _pseudo_provenance(table, f"{path}." if path else "", derived, param.axis)
                    if pseudo is not None:
                        found[param.tensor] = pseudo
                    break
    return found


def _adapter(root: nn.Module, path: Optional[str]):
    if path is None:
        return None
    module = root.get_submodule(path)
    return next((adapt for matches, adapt in DERIVED_ADAPTERS if matches(module)), None)
