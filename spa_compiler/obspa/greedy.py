"""One consumer layer's state in OBSPA's greedy ranking: costs of removing atoms, and the joint downdate.

The greedy removes atoms step by step.  Removing the units ``Q`` (columns, or whole channels of a
channel-granularity Hessian) costs ``1/2 tr( ((H^-1)[Q,Q])^-1 G[Q,Q] )`` with ``G`` the Gram matrix of the
weights over the units (``W^T W`` for an exact Hessian, :meth:`obs.KroneckerHessian.gram`), and with
``M = ((H^-1)[Q,Q])^-1 (H^-1)[Q,:]`` compensates ``W -= W[:,Q] M`` (so ``G`` becomes
``G - M^T G[Q,:] - G[:,Q] M + M^T G[Q,Q] M``) and downdates ``H^-1 -= (H^-1)[:,Q] M``.  Removing several
atoms jointly equals removing them one after another.  What is kept per consumer is chosen for speed:

- the weights themselves (``out x U x k``) when they are smaller than the units' Gram matrix
  (``U x U``, :meth:`obs.KroneckerHessian.gram`), else that Gram matrix: a 1x1 conv reading a
  2048-channel residual stream with 512 outputs moves 4x less data with its weights, a 3x3 conv with
  512 inputs and outputs (``k = 9``) 3x less with the Gram matrix;
- only the units still alive: removed rows and columns are dropped after each step, so the downdates
  over the whole greedy cost a third of what they would on matrices of full size.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .compensate import LayerEntry


class ConsumerState:
    """The compensated weights (or Gram matrix) and inverse Hessian of one consumer over its alive units."""

    def __init__(self, entry: LayerEntry, atom_positions: list[np.ndarray]):
        layer, hessian = entry.layer, entry.hessian
        self.taps = hessian.taps
        self.energy = layer.energy(hessian)
        self.hinv = entry.hinv.copy()
        units = len(hessian.units)
        self.alive = np.arange(units)                  # unit index of every row of hinv / w / gram
        self.local = np.arange(units)                  # unit index -> row (-1 once removed)
        self.atom_units = [entry.units(p) for p in atom_positions]
        sizes = np.array([len(u) for u in self.atom_units])
        # every atom one unit (or none): costs and removals index arrays instead of looping over atoms
        self.single: Optional[np.ndarray] = None
        if len(sizes) and sizes.max() <= 1:
            self.single = np.array([u[0] if len(u) else -1 for u in self.atom_units], dtype=np.int64)
        out, k = layer.w.shape[0], hessian.k
        keep_weights = out * k < 3 * units
        self.w: Optional[np.ndarray] = hessian.split(layer.w).copy() if keep_weights else None  # (out, U, k)
        self.gram: Optional[np.ndarray] = None if keep_weights else hessian.gram(layer.w)

    def costs(self, atoms: np.ndarray) -> np.ndarray:
        """OBS cost of removing each of *atoms* alone (``1/2 tr(((H^-1)[Q,Q])^-1 G[Q,Q])``), normalized by
        the layer's output energy."""
        if self.single is not None:
            units = self.single[atoms]
            present = units >= 0
            rows = self.local[units[present]]
            out = np.zeros(len(atoms))
            out[present] = 0.5 * self._gram_diagonal()[rows] / np.diag(self.hinv)[rows]
            return out / self.energy
        blocks = [self.local[self.atom_units[a]] for a in atoms]
        out = np.zeros(len(blocks))
        sizes = np.array([len(b) for b in blocks])
        for size in np.unique(sizes):
            if size == 0:
                continue
            chosen = np.flatnonzero(sizes == size)
            rows = np.stack([blocks[i] for i in chosen])                   # (n, size)
            if size == 1:
                out[chosen] = 0.5 * self._gram_diagonal()[rows[:, 0]] / np.diag(self.hinv)[rows[:, 0]]
                continue
            sub_p = self.hinv[rows[:, :, None], rows[:, None, :]]
            out[chosen] = 0.5 * np.trace(np.linalg.solve(sub_p, self._gram_blocks(rows)), axis1=1, axis2=2)
        return out / self.energy

    def _gram_diagonal(self) -> np.ndarray:
        if self.gram is not None:
            return np.diag(self.gram)
        return np.sum((self.w @ self.taps) * self.w, axis=(0, 2))

    def _gram_blocks(self, rows: np.ndarray) -> np.ndarray:
        """``G[Q, Q]`` for every row of *rows* (n, size) of local unit indices: (n, size, size)."""
        if self.gram is not None:
            return self.gram[rows[:, :, None], rows[:, None, :]]
        wq = np.moveaxis(self.w[:, rows, :], 0, 1)                         # (n, out, size, k)
        wq = wq.transpose(0, 2, 1, 3).reshape(len(rows), rows.shape[1], -1)  # (n, size, out * k)
        mixed = (self.w[:, rows, :] @ self.taps).transpose(1, 2, 0, 3).reshape(wq.shape)
        return mixed @ np.swapaxes(wq, 1, 2)

    def remove(self, atoms: np.ndarray) -> None:
        """Remove *atoms* jointly (equal to one by one): compensate, downdate, drop their rows."""
        if self.single is not None:
            units = self.single[atoms]
            units = units[units >= 0]
        else:
            units = np.concatenate([self.atom_units[a] for a in atoms]) if len(atoms) else np.zeros(0, int)
        if not len(units):
            return
        q = self.local[units]
        m = np.linalg.solve(self.hinv[np.ix_(q, q)], self.hinv[q, :])     # (|Q|, alive)
        hinv = self.hinv - self.hinv[:, q] @ m
        keep = np.ones(len(self.alive), dtype=bool)
        keep[q] = False
        if self.w is not None:
            moved = np.swapaxes(np.swapaxes(self.w[:, q, :], 1, 2) @ m[:, keep], 1, 2)
            self.w = self.w[:, keep, :] - moved
        else:
            g_rows = self.gram[q, :]
            gram = self.gram - m.T @ g_rows - g_rows.T @ m + m.T @ (self.gram[np.ix_(q, q)] @ m)
            self.gram = gram[np.ix_(keep, keep)]
        self.hinv = hinv[np.ix_(keep, keep)]
        self.local[self.alive[~keep]] = -1
        self.alive = self.alive[keep]
        self.local[self.alive] = np.arange(len(self.alive))
