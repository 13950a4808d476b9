"""Cut the module's own tensors the way the pruned graph cut their constants, and copy changed values back.

What was removed from a module tensor is read off the provenance: the
elements some constant held before the rewrite and none holds after it.
Those must form whole hyperplanes (output rows, input columns, heads) of
the tensor, which is then sliced with ``index_select`` along each axis.
Values the driver changed rather than removed (OBSPA's compensated consumer
weights, BatchNorm folds and recalibration) are copied from the pruned
model into the sliced tensors, so the module computes what the pruned graph
computes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx
import torch

from ..errors import CompileError
from ..weights import tensor_array
from .markers import TensorSlot, TensorTable
from .provenance import Provenance

Keep = list[Optional[np.ndarray]]  # per axis: the kept indices, None where the axis is untouched


@dataclass
class Cut:
    """One module tensor's cut: its slot, its shape before, and the kept indices per axis."""

    slot: TensorSlot
    keep: Keep

    @property
    def new_shape(self) -> tuple[int, ...]:
        return tuple(len(k) if k is not None else n for k, n in zip(self.keep, self.slot.shape))


def _present(provenance: Provenance, total: int) -> np.ndarray:
    mask = np.zeros(total, dtype=bool)
    for index in provenance.values():
        mask[index.ravel()] = True
    return mask


def find_cuts(table: TensorTable, before: Provenance, after: Provenance) -> dict[str, Cut]:
    """Module tensor name -> its cut, for every tensor that lost elements."""
    removed_all = _present(before, table.total) & ~_present(after, table.total)
    cuts = {}
    for slot in table.slots:
        removed = removed_all[slot.offset:slot.offset + slot.size].reshape(slot.shape)
        if removed.any():
            cuts[slot.name] = Cut(slot, _hyperplanes(slot, removed))
    return cuts


def _hyperplanes(slot: TensorSlot, removed: np.ndarray) -> Keep:
    """Per axis, the indices kept, when *removed* is a union of whole hyperplanes (else a CompileError)."""
    keep: Keep = []
    union = np.zeros_like(removed)
    for axis in range(removed.ndim):
        others = tuple(a for a in range(removed.ndim) if a != axis)
        whole = removed.all(axis=others) if others else removed
        if whole.any():
            keep.append(np.flatnonzero(~whole))
            union |= np.expand_dims(whole, others) if others else whole
        else:
            keep.append(None)
    if not np.array_equal(union, removed):
        raise CompileError(f"torch: the elements removed from {slot.name} {list(slot.shape)} are not whole "
                           "rows/columns; the module cannot be cut like the graph")
    return keep


def changed_values(model: onnx.ModelProto, after: Provenance, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(global element indices, new values) where the pruned model holds a value other than the module's."""
    indices, values_out = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.float32)]
    for init in model.graph.initializer:
        index = after.get(init.name)
        if index is None:
            continue
        values = tensor_array(init)
        if values.shape != index.shape:
            raise CompileError(f"torch: pruned constant {init.name} has shape {list(values.shape)}, "
                               f"its provenance {list(index.shape)}")
        old = flat[index]
        differs = ~((values == old) | (np.isnan(values) & np.isnan(old)))
        indices.append(index[differs])
        values_out.append(values[differs].astype(np.float32))
    return np.concatenate(indices), np.concatenate(values_out)


def apply_cuts(module: torch.nn.Module, table: TensorTable, cuts: dict[str, Cut],
               changes: tuple[np.ndarray, np.ndarray]) -> None:
    """Replace each cut tensor of *module* by its slice, then write the changed values in."""
    indices, values = changes
    slot_ids = np.searchsorted(table.starts, indices, side="right") - 1
    written = {table.slots[i].name: slot_ids == i for i in np.unique(slot_ids)}
    for name in sorted(set(cuts) | set(written)):
        slot = table.by_name[name]
        owner = module.get_submodule(slot.module)
        old = getattr(owner, slot.attr)
        cut = cuts.get(name, Cut(slot, [None] * len(slot.shape)))
        new = old.detach()
        for axis, kept in enumerate(cut.keep):
            if kept is not None:
                new = new.index_select(axis, torch.as_tensor(kept, device=new.device))
        new = new.clone()
        if name in written:
            _write(new, cut, indices[written[name]], values[written[name]])
        if slot.is_parameter:
            setattr(owner, slot.attr, torch.nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            owner._buffers[slot.attr] = new  # a buffer is replaced in place, its persistence kept


def _write(tensor: torch.Tensor, cut: Cut, indices: np.ndarray, values: np.ndarray) -> None:
    """Write *values*, given by old global element index, into the sliced *tensor*."""
    slot = cut.slot
    old_positions = np.unravel_index(indices - slot.offset, slot.shape)
    new_positions = []
    for axis, positions in enumerate(old_positions):
        kept = cut.keep[axis]
        if kept is None:
            new_positions.append(positions)
            continue
        where = np.minimum(np.searchsorted(kept, positions), len(kept) - 1)
        if (kept[where] != positions).any():
            raise CompileError(f"torch: the pruned model changed removed elements of {slot.name}")
        new_positions.append(where)
    target = tuple(torch.as_tensor(p, device=tensor.device) for p in new_positions)
    tensor[target] = torch.as_tensor(values, dtype=tensor.dtype, device=tensor.device)
