"""What rules may look at while analysing (shapes, facts) and use while rewriting (kept channels)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import onnx_graphsurgeon as gs

from ..ir import all_tensors, const_values, static_shape


@dataclass
class AnalysisFacts:
    """What rules learn while analysing and read back while rewriting, one typed field per kind of fact.

    Each is keyed by node name (``periodic`` by symbolic dim name); a rule writes only its own fields.
    """

    opset: int = 0
    shuffle: dict[str, tuple[str, Any]] = field(default_factory=dict)       # Reshape-Transpose-Reshape: (head|tail, match)
    shuffle_match: dict[str, Any] = field(default_factory=dict)             # cache of shuffle matching by node
    split_factor: dict[str, int] = field(default_factory=dict)              # reshape split: the output axis of the channel
    periodic: dict[str, int] = field(default_factory=dict)                  # folded k*batch dim name -> k (heads)
    fold: dict[str, tuple[int, int]] = field(default_factory=dict)          # heads folded into batch: (axis, heads)
    unfold: dict[str, tuple[int, int]] = field(default_factory=dict)        # heads unfolded: (in axis, out axis)
    slices: dict[str, dict[int, tuple[int, int]]] = field(default_factory=dict)  # Slice bounds per axis


@dataclass
class AnalysisContext:
    """Read-only view of the graph for rules, plus ``facts`` they leave for their own rewrite."""

    graph: gs.Graph
    opset: int
    facts: AnalysisFacts = field(default_factory=AnalysisFacts)
    prune_hidden: bool = False  # opt-in: tie channels through normalizations over them (inexact)
    head_dims: bool = False     # opt-in: split projections by head dimension instead of by head

    def shape(self, tensor: gs.Tensor) -> Optional[list[Optional[int]]]:
        if isinstance(tensor, gs.Constant):
            return list(tensor.shape)
        return static_shape(tensor)

    def raw_shape(self, tensor: gs.Tensor) -> Optional[list]:
        """The shape with symbolic dims kept as strings (``batch``, ``batch*seq``); unknown dims None."""
        if isinstance(tensor, gs.Constant):
            return list(tensor.shape)
        if tensor.shape is None:
            return None
        return [d if isinstance(d, (int, np.integer)) and d >= 0 else (d if isinstance(d, str) and d else None)
                for d in tensor.shape]

    def rank(self, tensor: gs.Tensor) -> Optional[int]:
        shape = self.shape(tensor)
        return None if shape is None else len(shape)

    def dim(self, tensor: gs.Tensor, axis: int) -> Optional[int]:
        """Static size of an axis; a folded ``k*batch`` axis (heads folded into the batch) counts as k."""
        shape = self.shape(tensor)
        if shape is None or not 0 <= axis < len(shape):
            return None
        if shape[axis] is None:
            raw = tensor.shape[axis] if tensor.shape is not None else None
            return self.facts.periodic.get(raw) if isinstance(raw, str) else None
        return shape[axis]


@dataclass
class RewriteContext:
    """Kept positions per changed space, and the edits a rule makes to constants and attributes."""

    graph: gs.Graph
    facts: AnalysisFacts
    kept_of: Callable[[str, int], Optional[np.ndarray]]
    changed: list[str] = field(default_factory=list)
    _taken: set[str] = field(default_factory=set)

    def fresh_name(self, base: str) -> str:
        """A tensor name not used anywhere in the graph (shared constants get one copy per use)."""
        if not self._taken:
            self._taken.update(all_tensors(self.graph).keys())
        name, k = f"{base}__spa", 1
        while name in self._taken:
            k += 1
            name = f"{base}__spa{k}"
        self._taken.add(name)
        return name

    def kept(self, tensor: gs.Tensor, axis: int) -> Optional[np.ndarray]:
        """Kept positions of (tensor, axis), or None when that space is untouched."""
        return self.kept_of(tensor.name, axis)

    def new_dim(self, tensor: gs.Tensor, axis: int, old: Optional[int]) -> Optional[int]:
        kept = self.kept(tensor, axis)
        return old if kept is None else int(len(kept))

    def replace_const(self, node: gs.Node, index: int, values: np.ndarray) -> None:
        """Give input *index* of *node* new constant values (a fresh tensor: never edit a shared one)."""
        old = node.inputs[index]
        dtype = const_values(old).dtype if isinstance(old, gs.Constant) else values.dtype
        node.inputs[index] = gs.Constant(self.fresh_name(old.name), np.asarray(values, dtype=dtype))
        self.changed.append(f"{node.name}: input {index} {old.name} -> {list(np.shape(values))}")
