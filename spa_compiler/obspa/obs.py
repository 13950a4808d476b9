"""Optimal Brain Surgeon for structured removal: costs, compensation and inverse downdates.

For a consumer layer with weight ``W`` (out x in, a Conv flattened to
``out x (in*kh*kw)``) and input second moment ``H``, removing the block of
input columns ``Q`` while re-solving the remaining weights costs

    dE(Q) = 1/2 tr( W[:,Q] ((H^-1)[Q,Q])^-1 W[:,Q]^T )

and the optimal update is ``W -= W[:,Q] ((H^-1)[Q,Q])^-1 (H^-1)[Q,:]`` (then
the columns Q are dropped).  Everything here is float64; ``H`` is damped by
``lambda * mean(diag H)`` and inverted by Cholesky, with an eigenvalue
fallback for matrices that are not numerically positive definite.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis import ParamSlice
from ..analysis.rules import rule_for

DEFAULT_DAMPING = 0.01


def damped_inverse(h: np.ndarray, damping: float = DEFAULT_DAMPING) -> np.ndarray:
    """(H + damping * mean(diag H) * I)^-1, with dead inputs (zero variance) given H_ii = 1."""
    h = np.array(h, dtype=np.float64, copy=True)
    dead = np.diag(h) <= 0
    h[dead, :] = 0
    h[:, dead] = 0
    h[dead, dead] = 1.0
    scale = float(np.mean(np.diag(h))) or 1.0
    h[np.diag_indices_from(h)] += damping * scale
    try:
        chol = np.linalg.cholesky(h)
        inv_chol = np.linalg.solve(chol, np.eye(len(h)))
        return inv_chol.T @ inv_chol
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh(h)
        values = np.maximum(values, 1e-12 * max(values.max(), 1e-12))
        return (vectors / values) @ vectors.T


MAX_DAMPING = 1.0  # damping past this fraction of mean(diag H) leaves little compensation: give it up instead


def robust_inverse(h: np.ndarray, damping: float = DEFAULT_DAMPING) -> tuple[Optional[np.ndarray], float]:
    """A finite damped inverse of *h* and the damping it took, or (None, damping) when there is none.

    Real weights and data-free inputs give Hessians that plain damping cannot invert usefully (near
    singular blocks, huge dynamic range); an inverse with non-finite or astronomically large entries
    would write NaN/Inf into the compensated weights.  Damping is raised x10 until the inverse is
    finite and its entries stay below ``1 / (tiny * mean diag)``, up to ``MAX_DAMPING``; a non-finite
    *h* (NaN/Inf activations) has no inverse at all.
    """
    if not np.all(np.isfinite(h)):
        return None, damping
    scale = float(np.mean(np.abs(np.diag(h)))) or 1.0
    current = damping
    while True:
        hinv = damped_inverse(h, current)
        if np.all(np.isfinite(hinv)) and float(np.max(np.abs(hinv))) * scale < 1e12:
            return hinv, current
        if current >= MAX_DAMPING:
            return None, current
        current = min(MAX_DAMPING, max(current * 10, 1e-4))


def block_cost(w: np.ndarray, hinv: np.ndarray, cols: np.ndarray) -> float:
    """dE of removing columns *cols* of *w* (rows = outputs)."""
    block = hinv[np.ix_(cols, cols)]
    wq = w[:, cols]
    return 0.5 * float(np.trace(wq @ np.linalg.solve(block, wq.T)))


def block_costs_uniform(w: np.ndarray, hinv: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """dE for many equal-size blocks at once; *blocks* is (n_blocks, block_size) of column indices."""
    sub = hinv[blocks[:, :, None], blocks[:, None, :]]           # (n, k, k)
    wq = np.transpose(w[:, blocks], (1, 0, 2))                    # (n, out, k)
    solved = np.linalg.solve(sub, np.transpose(wq, (0, 2, 1)))    # (n, k, out)
    return 0.5 * np.einsum("nok,nko->n", wq, solved)


def output_power(w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Per output row ``w_i H w_i^T`` (the second moment of each output), through BLAS.

    A three-operand ``einsum`` would loop over out x in x in in C without BLAS:
    minutes on a 3x3 conv with 512 inputs.
    """
    return np.sum((w @ h) * w, axis=1)


def remove_block(w: np.ndarray, hinv: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compensate *w* for removing *cols* and downdate *hinv*; removed columns become exactly zero.

    Removing several blocks at once with their union as *cols* equals removing
    them one after another (the OBS downdate composes), at the cost of one
    pass over *hinv* instead of one per block.  The inputs are left unchanged.
    """
    block_inv = np.linalg.inv(hinv[np.ix_(cols, cols)])
    rows = block_inv @ hinv[cols, :]
    w = w - w[:, cols] @ rows
    hinv = hinv - hinv[:, cols] @ rows
    w[:, cols] = 0.0
    hinv[cols, :] = 0.0
    hinv[:, cols] = 0.0
    return w, hinv


@dataclass
class ConsumerLayer:
    """A boundary layer reading a group: its weight as a float64 (out x features) matrix and how positions map to columns."""

    node: gs.Node
    param: ParamSlice
    shape: tuple[int, ...]
    w: np.ndarray          # (out, features)
    cols_per_position: int

    @classmethod
    def of(cls, node: gs.Node, param: ParamSlice, values: np.ndarray) -> Optional["ConsumerLayer"]:
        values = np.asarray(values, dtype=np.float64)
        rule = rule_for(node)
        view = rule.consumer_matrix(node, param, values) if rule is not None and rule.is_consumer_layer(node) \
            else None
        if view is None:
            return None
        w, cols_per_position = view
        return cls(node, param, values.shape, w, cols_per_position)

    def columns(self, positions: np.ndarray) -> np.ndarray:
        """Weight columns of the given positions of the consumer's input space."""
        k = self.cols_per_position
        return (np.asarray(positions)[:, None] * k + np.arange(k)[None, :]).reshape(-1)

    def weight_values(self, w: np.ndarray) -> np.ndarray:
        """A (out x features) matrix back in the initializer's layout."""
        return rule_for(self.node).weight_values(self.node, self.param, w, self.shape)

    def representable(self, w: np.ndarray) -> np.ndarray:
        """*w* as the layer can store it (integer weights: on their grid), still as an (out x features) matrix."""
        return rule_for(self.node).representable(self.node, self.param, w)

    @property
    def measured(self) -> bool:
        """Whether the node's statistics describe this slice's inputs (a recurrence's R: no, identity)."""
        return rule_for(self.node).measures(self.node, self.param)

    def bias_input(self):
        """Input position of the bias the removed inputs' mean is folded into (None: the layer has none)."""
        return rule_for(self.node).bias_input(self.node)

    def energy(self, h: np.ndarray) -> float:
        """tr(W H W^T): the layer's output energy, so costs compare across layers."""
        return float(np.sum(output_power(self.w, h))) or 1.0
