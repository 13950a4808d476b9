"""Which module tensor elements every constant of the normalized graph holds, and which groups that leaves prunable.

The marker-valued graph is normalized exactly like the real one (same
structure, same names), so its constants decode to provenance for the real
graph's constants of the same name.  A provenance is trusted only where the
real constant equals the module values it names: a constant computed from
weights in ``forward`` (or folded by normalization) fails that check and its
groups are frozen, as are groups whose parameters share module elements with
another use (tied weights), since one module tensor cannot be cut two ways.
One constant repeating an element is fine when every repeat lies in the same
channel of the group's axis (a relative position bias gathered from its table:
a head's table column fills that head's slice), since any channel cut then
removes all of its repeats or none.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis import DependencyAnalysis
from ..plan import Plan
from ..rewrite import kept_positions
from .markers import TensorTable

Provenance = dict[str, np.ndarray]  # constant name -> global element index per element (the constant's shape)


def constants(graph: gs.Graph) -> dict[str, gs.Constant]:
    return {name: t for name, t in graph.tensors().items() if isinstance(t, gs.Constant)}


def decode_graph(graph: gs.Graph, table: TensorTable) -> Provenance:
    """Provenance of every constant of the marker-valued *graph* that consists of markers only."""
    found = {}
    for name, const in constants(graph).items():
        index = table.decode(const.values)
        if index is not None:
            found[name] = index
    return found


def confirmed(marked: Provenance, real_graph: gs.Graph, flat: np.ndarray) -> Provenance:
    """The provenances whose real constant (same name) holds exactly the module values they name."""
    real = constants(real_graph)
    kept = {}
    for name, index in marked.items():
        const = real.get(name)
        if const is None or tuple(const.shape) != index.shape:
            continue
        if np.array_equal(np.asarray(const.values), flat[index], equal_nan=True):
            kept[name] = index
    return kept


def shared_constants(provenance: Provenance, total: int) -> tuple[set[str], set[str]]:
    """(constants holding a module element another constant holds too, constants only repeating their own).

    One byte per module element (how many constants hold it: 0, 1, or 2 for more), not a count per element
    of every constant: on ViT-H a bincount of all provenances was 5 GB.
    """
    holders = np.zeros(total, dtype=np.uint8)
    for index in provenance.values():
        flat = index.ravel()
        holders[flat] = np.minimum(holders[flat], 1) + 1  # repeats inside one constant count once
    shared, repeating = set(), set()
    for name, index in provenance.items():
        if (holders[index] > 1).any():
            shared.add(name)
        elif _repeats(index):
            repeating.add(name)
    return shared, repeating


def _repeats(index: np.ndarray) -> bool:
    """True when *index* names some element twice (one flag per element of its span, no sort)."""
    low, high = int(index.min()), int(index.max())
    if high - low + 1 < index.size:
        return True
    seen = np.zeros(high - low + 1, dtype=bool)
    seen[index.ravel() - low] = True
    return int(np.count_nonzero(seen)) < index.size


def repeats_stay_in_one_channel(index: np.ndarray, axis: int) -> bool:
    """True when every element *index* repeats sits at one position along *axis* (a cut there takes all or none)."""
    rows = np.moveaxis(index, axis, 0).reshape(index.shape[axis], -1)
    elements = rows.ravel()
    channels = np.repeat(np.arange(rows.shape[0]), rows.shape[1])
    order = np.argsort(elements, kind="stable")
    elements, channels = elements[order], channels[order]
    same = elements[1:] == elements[:-1]
    return bool((channels[1:][same] == channels[:-1][same]).all())


def unmappable_groups(analysis: DependencyAnalysis, provenance: Provenance, table: TensorTable,
                      unadapted: dict[str, str]) -> dict[int, str]:
    """Prunable group id -> why its cut cannot be applied to the module (those groups are frozen).

    *unadapted*: module tensor name -> owner type, for tensors whose owner has no attribute adapter; such a
    tensor may only be cut when it is vector-like (one axis longer than 1: a layer scale, a bias), since
    its module's forward may read widths or head counts from attributes nobody updates.
    """
    shared, repeating = shared_constants(provenance, table.total)
    reasons = {}
    for group in analysis.prunable_groups:
        for param in group.params:
            why = _why_not(param, provenance, shared, repeating, table, unadapted)
            if why:
                reasons[group.id] = why
                break
    return reasons


def _why_not(param, provenance: Provenance, shared: set[str], repeating: set[str], table: TensorTable,
             unadapted: dict[str, str]):
    if param.tensor not in provenance:
        return f"torch: {param.tensor} of {param.node} ({param.op}) is not a module parameter or buffer " \
               "(computed in forward?)"
    index = provenance[param.tensor]
    slot = table.slot_of(int(index.flat[0]))
    if param.tensor in shared or (param.tensor in repeating and not repeats_stay_in_one_channel(index, param.axis)):
        return f"torch: {param.tensor} of {param.node} shares {slot.name} with another use"
    if slot.name in unadapted and sum(n > 1 for n in slot.shape) > 1:
        return f"torch: {slot.name} {list(slot.shape)} belongs to {unadapted[slot.name]}, which has no adapter"
    return None


def after_rewrite(analysis: DependencyAnalysis, plan: Plan, provenance: Provenance) -> Provenance:
    """The provenance of the pruned graph's constants: each sliced as the rewrite slices it."""
    kept = kept_positions(analysis, plan)
    pruned = dict(provenance)
    for gid in plan.removed:
        for param in analysis.groups[gid].params:
            pruned[param.tensor] = np.take(pruned[param.tensor], kept[param.space], axis=param.axis)
    return pruned
