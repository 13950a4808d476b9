"""Marker values: give every float32 element of a module's parameters and buffers its own bit pattern.

Why: the TorchScript exporter merges initializers with equal values (every
freshly initialised BatchNorm has weight 1 and bias 0), and normalization
transposes, slices and copies weights under new names.  A copy of the module
whose elements are all distinct exports one initializer per tensor, and any
constant of the exported or normalized graph then *decodes*, element by
element, to the module tensor elements it was moved from: exact provenance
through any layout op, without trusting names.

The markers are the float32 bit patterns ``MARKER_BASE + i`` for the i-th
element of all tensors, then the same patterns with the sign bit set: 2^29
patterns per sign, 2^30 (1.07 G) elements in all (ViT-H's 632 M and
RegNetY-128GF's 645 M fit).  They are normal numbers of magnitude in
(1.18e-38, 2.2e-19]: exponents 1 to 65 of 254.  Why there: no real constant
lives in that window.  The smallest eps of a normalization layer is 1e-12
(Hugging Face's LayerNorm), 2^22 times above the top marker; masks and clamps
use 0, +-inf, +-3.4e38 (finfo.max) or finfo.tiny (1.18e-38, the smallest
normal), which is exactly why the markers start one pattern above it.
Subnormals are left out too (zero is one, and runtimes may flush them).
A constant computed from markers (a product folded by normalization) may
land on another marker: :func:`provenance.confirmed` rejects any provenance
whose real constant does not hold the module values it names.  Indices are
int32 (2^30 < 2^31): on a 600 M element model the provenance of every
constant is 2.5 GB, not 5.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch

from ..errors import UsageError

MARKER_BASE = 0x00800001  # one above the smallest positive normal float32 (finfo.tiny, a real clamp floor)
HALF = 2**29  # markers of either sign: bit patterns up to 0x20800000, magnitude at most 2^-62 (2.2e-19)
SIGN = 0x80000000
MAX_ELEMENTS = 2 * HALF
_HALF_BITS = HALF.bit_length() - 1


def encode(indices: np.ndarray) -> np.ndarray:
    """The marker values of global element *indices* (float32)."""
    indices = np.asarray(indices, dtype=np.int64)
    bits = (MARKER_BASE + indices % HALF) | np.where(indices >= HALF, SIGN, 0)
    return bits.astype(np.uint32).view(np.float32)


def encode_range(start: int, count: int) -> np.ndarray:
    """The markers of elements ``start .. start + count - 1`` without an int64 array per element."""
    out = np.empty(count, dtype=np.uint32)
    done = 0
    while done < count:  # at most one change of sign inside the range
        index = start + done
        step = min(count - done, HALF - index % HALF)
        first = (MARKER_BASE + index % HALF) | (SIGN if index >= HALF else 0)
        out[done:done + step] = np.arange(first, first + step, dtype=np.uint32)
        done += step
    return out.view(np.float32)


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

    def values(self, module: torch.nn.Module) -> "ModuleValues":
        """*module*'s elements by global index, read from its own tensors (no copy of the weights)."""
        return ModuleValues(self, module)

    def slot_of(self, index: int) -> TensorSlot:
        return self.slots[int(np.searchsorted(self.starts, index, side="right")) - 1]

    @contextmanager
    def marked(self, module: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """*module* with its tensors' data swapped for the marker values, swapped back on exit.

        Why a swap and not a deep copy: the copy held a third set of weights
        (module, copy, export); the swap holds the markers only while the
        exporter runs, and the module's own tensor objects come back untouched.
        """
        tensors = module_tensors(module)
        originals = {}
        try:
            with torch.no_grad():
                for slot in self.slots:
                    tensor = tensors[slot.name]
                    originals[slot.name] = tensor.data
                    markers = torch.from_numpy(encode_range(slot.offset, slot.size).reshape(slot.shape))
                    tensor.data = markers.to(tensor.device)
            yield module
        finally:
            with torch.no_grad():
                for name, data in originals.items():
                    tensors[name].data = data

    def decode(self, values) -> Optional[np.ndarray]:
        """Global element indices of *values* (same shape), or None unless every element is a marker."""
        array = np.asarray(values)
        if array.dtype != np.float32 or array.size == 0:
            return None
        bits = np.ascontiguousarray(array).view(np.uint32)
        magnitude = bits & np.uint32(SIGN - 1)
        low, high = magnitude.min(), magnitude.max()  # cheap rejection before any index array is made
        if low < MARKER_BASE or high >= MARKER_BASE + HALF:
            return None
        index = (magnitude - np.uint32(MARKER_BASE)).view(np.int32)
        index |= (bits >> np.uint32(31)).view(np.int32) << _HALF_BITS  # the sign bit: the upper half
        if index.max() >= self.total:
            return None
        return index


def module_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by state-dict name."""
    tensors = dict(module.named_parameters())
    tensors.update(dict(module.named_buffers()))
    return tensors


class ModuleValues:
    """The real value of every global element, gathered from the module's tensors when asked.

    ``values[index]`` is what a flat float32 copy of all tensors indexed by
    *index* would give, without that copy (on ViT-H, 2.5 GB).  The views are
    taken when made: build it before the module is cut.
    """

    def __init__(self, table: TensorTable, module: torch.nn.Module):
        tensors = module_tensors(module)
        self.starts = table.starts
        self.views = [tensors[s.name].detach().cpu().reshape(-1).numpy() for s in table.slots]

    def release(self) -> None:
        """Drop the views (once the module's tensors are about to be replaced, their old storage can go)."""
        self.views = []

    def __getitem__(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index)
        if index.size == 0:
            return np.zeros(index.shape, dtype=np.float32)
        first, last = np.searchsorted(self.starts, [index.min(), index.max()], side="right") - 1
        if first == last:  # the usual case: one tensor, maybe transposed or sliced
            return self.views[first][index - self.starts[first]]
        slots = np.searchsorted(self.starts, index, side="right") - 1
        out = np.empty(index.shape, dtype=np.float32)
        for i in np.unique(slots):
            where = slots == i
            out[where] = self.views[i][index[where] - self.starts[i]]
        return out
