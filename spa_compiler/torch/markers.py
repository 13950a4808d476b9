"""Marker values: give every float32 element of a module's parameters and buffers its own bit pattern.

Why: the TorchScript exporter merges initializers with equal values (every
freshly initialised BatchNorm has weight 1 and bias 0), and normalization
transposes, slices and copies weights under new names.  A copy of the module
whose elements are all distinct exports one initializer per tensor, and any
constant of the exported or normalized graph then *decodes*, element by
element, to the module tensor elements it was moved from: exact provenance
through any layout op, without trusting names.

The markers are the float32 bit patterns ``MARKER_BASE + i`` for the i-th
element of all tensors, then the same patterns with the sign bit set: normal
numbers of magnitude below 1e-28, a range no real constant (eps, scales,
means) falls into; 2^29 elements in all (ViT-L's 306 M fit).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..errors import UsageError

MARKER_BASE = 0x00800000  # the smallest positive normal float32
HALF = 2**28  # markers of either sign stay below ~5e-29 in magnitude
SIGN = 0x80000000
MAX_ELEMENTS = 2 * HALF


def encode(indices: np.ndarray) -> np.ndarray:
    """The marker values of global element *indices* (float32)."""
    indices = indices.astype(np.int64)
    bits = (MARKER_BASE + indices % HALF) | np.where(indices >= HALF, SIGN, 0)
    return bits.astype(np.uint32).view(np.float32)


@dataclass(frozen=True)
class TensorSlot:
    """One float32 parameter or buffer: where it lives in the module and in the global element numbering."""

    name: str  # dotted name, as in state_dict()
    module: str  # dotted path of the owning module ('' for the root)
    attr: str  # attribute name in the owner (weight, running_mean, in_proj_weight, ...)
    is_parameter: bool
    offset: int  # first global element index
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


class TensorTable:
    """Every float32 parameter and buffer of a module, numbered element by element."""

    def __init__(self, module: torch.nn.Module):
        slots, offset = [], 0
        for is_param, named in ((True, module.named_parameters()), (False, module.named_buffers())):
            for name, tensor in named:
                if tensor.dtype != torch.float32:
                    continue
                owner, _, attr = name.rpartition(".")
                slots.append(TensorSlot(name, owner, attr, is_param, offset, tuple(tensor.shape)))
                offset += tensor.numel()
        if offset > MAX_ELEMENTS:
            raise UsageError(f"module has {offset} float32 parameter elements; spa_compiler.torch supports at most "
                             f"{MAX_ELEMENTS}")
        self.slots = slots
        self.total = offset
        self.starts = np.array([s.offset for s in slots], dtype=np.int64)
        self.by_name = {s.name: s for s in slots}

    def flat_values(self, module: torch.nn.Module) -> np.ndarray:
        """All elements of *module*'s tensors in table order, as one float32 array."""
        state = dict(module.named_parameters())
        state.update(dict(module.named_buffers()))
        flat = np.empty(self.total, dtype=np.float32)
        for slot in self.slots:
            flat[slot.offset:slot.offset + slot.size] = state[slot.name].detach().cpu().reshape(-1).numpy()
        return flat

    def slot_of(self, index: int) -> TensorSlot:
        return self.slots[int(np.searchsorted(self.starts, index, side="right")) - 1]

    def marked_copy(self, module: torch.nn.Module) -> torch.nn.Module:
        """A deep copy of *module* whose tensors hold the marker values (the user's module is untouched)."""
        marked = copy.deepcopy(module)
        tensors = dict(marked.named_parameters())
        tensors.update(dict(marked.named_buffers()))
        with torch.no_grad():
            for slot in self.slots:
                values = encode(np.arange(slot.offset, slot.offset + slot.size))
                tensors[slot.name].copy_(torch.from_numpy(values.reshape(slot.shape)))
        return marked

    def decode(self, values) -> Optional[np.ndarray]:
        """Global element indices of *values* (same shape), or None unless every element is a marker."""
        array = np.asarray(values)
        if array.dtype != np.float32 or array.size == 0:
            return None
        bits = np.ascontiguousarray(array).view(np.uint32).astype(np.int64)
        magnitude = (bits & (SIGN - 1)) - MARKER_BASE
        if magnitude.min() < 0 or magnitude.max() >= HALF:
            return None
        index = magnitude + (bits >> 31) * HALF
        if index.max() >= self.total:
            return None
        return index
