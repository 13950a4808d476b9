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
- rows and columns of removed units are zeroed in place (a downdate leaves zero rows zero), and the
  matrices are compacted to the units still alive only once a quarter of their rows are dead, so the
  downdates shrink with the alive units without copying a matrix at every step (the copies, not the
  arithmetic, were most of the greedy's time on a ResNet-50: 2304-wide inverses downdated 64 times);
  each step's product goes into one reused buffer instead of a fresh matrix.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .compensate import LayerEntry
from .obs import taps_product, unit_product

COMPACT_BELOW = 0.75  # compact the matrices once fewer than this fraction of their rows are alive


class ConsumerState:
    """The compensated weights (or Gram matrix) and inverse Hessian of one consumer over its alive units."""

    def __init__(self, entry: LayerEntry, atom_positions: list[np.ndarray]):
        layer, hessian = entry.layer, entry.hessian
        self.taps = hessian.taps
        self.energy = float(np.sum(entry.output_power)) or 1.0  # tr(W H W^T): costs compare across layers
        self._hinv = entry.hinv.copy()                 # rows of removed units zero until compacted
        units = len(hessian.units)
        self.rows = np.arange(units)                   # unit index of every row of the matrices
        self.live = np.ones(units, dtype=bool)         # whether a row's unit is still alive
        self.local = np.arange(units)                  # unit index -> row (-1 once removed)
        self._buffer = np.empty(0)
        self.atom_units = [entry.units(p) for p in atom_positions]
        sizes = np.array([len(u) for u in self.atom_units])
        # every atom one unit (or none): costs and removals index arrays instead of looping over atoms
        self.single: Optional[np.ndarray] = None
        if len(sizes) and sizes.max() <= 1:
            self.single = np.array([u[0] if len(u) else -1 for u in self.atom_units], dtype=np.int64)
        out, k = layer.matrix_shape[0], hessian.k
        keep_weights = out * k < 3 * units
        self._w: Optional[np.ndarray] = hessian.split(layer.w_copy()) if keep_weights else None  # (out, U, k)
        self._gram: Optional[np.ndarray] = None if keep_weights else hessian.gram(layer.w)
        entry.compact()  # the greedy reads no more of H

    @property
    def alive(self) -> np.ndarray:
        """Unit index of every alive unit, in row order of :attr:`hinv`, :attr:`w` and :attr:`gram`."""
        return self.rows[self.live]

    @property
    def hinv(self) -> np.ndarray:
        """The downdated inverse Hessian over the alive units."""
        return self._hinv[np.ix_(self.live, self.live)]

    @property
    def w(self) -> Optional[np.ndarray]:
        """The compensated weights over the alive units (out, alive, k), when kept."""
        return None if self._w is None else self._w[:, self.live, :]

    @w.setter
    def w(self, value: Optional[np.ndarray]) -> None:
        self._w = self._set(value)

    @property
    def gram(self) -> Optional[np.ndarray]:
        """The compensated weights' Gram matrix over the alive units, when kept instead of the weights."""
        return None if self._gram is None else self._gram[np.ix_(self.live, self.live)]

    @gram.setter
    def gram(self, value: Optional[np.ndarray]) -> None:
        self._gram = self._set(value)

    def _set(self, value: Optional[np.ndarray]) -> Optional[np.ndarray]:
        if value is not None and not self.live.all():
            raise ValueError("weights or Gram matrix can only be replaced before any removal")
        return value

    def costs(self, atoms: np.ndarray) -> np.ndarray:
        """OBS cost of removing each of *atoms* alone (``1/2 tr(((H^-1)[Q,Q])^-1 G[Q,Q])``), normalized by
        the layer's output energy."""
        if self.single is not None:
            units = self.single[atoms]
            present = units >= 0
            rows = self.local[units[present]]
            out = np.zeros(len(atoms))
            out[present] = 0.5 * self._gram_diagonal()[rows] / np.diag(self._hinv)[rows]
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
                out[chosen] = 0.5 * self._gram_diagonal()[rows[:, 0]] / np.diag(self._hinv)[rows[:, 0]]
                continue
            sub_p = self._hinv[rows[:, :, None], rows[:, None, :]]
            out[chosen] = 0.5 * np.trace(np.linalg.solve(sub_p, self._gram_blocks(rows)), axis1=1, axis2=2)
        return out / self.energy

    def _gram_diagonal(self) -> np.ndarray:
        """``diag(G)`` over every row (removed rows: zero)."""
        if self._gram is not None:
            return np.diag(self._gram)
        return np.sum(taps_product(self._w, self.taps) * self._w, axis=(0, 2))

    def _gram_blocks(self, rows: np.ndarray) -> np.ndarray:
        """``G[Q, Q]`` for every row of *rows* (n, size) of local unit indices: (n, size, size)."""
        if self._gram is not None:
            return self._gram[rows[:, :, None], rows[:, None, :]]
        wq = np.moveaxis(self._w[:, rows, :], 0, 1)                         # (n, out, size, k)
        wq = wq.transpose(0, 2, 1, 3).reshape(len(rows), rows.shape[1], -1)  # (n, size, out * k)
        mixed = taps_product(self._w[:, rows, :], self.taps).transpose(1, 2, 0, 3).reshape(wq.shape)
        return mixed @ np.swapaxes(wq, 1, 2)

    def remove(self, atoms: np.ndarray) -> None:
        """Remove *atoms* jointly (equal to one by one): compensate, downdate, zero their rows."""
        if self.single is not None:
            units = self.single[atoms]
            units = units[units >= 0]
        else:
            units = np.concatenate([self.atom_units[a] for a in atoms]) if len(atoms) else np.zeros(0, int)
        if not len(units):
            return
        q = self.local[units]
        hinv = self._hinv
        m = np.linalg.solve(hinv[np.ix_(q, q)], hinv[q, :])     # (|Q|, rows): zero at removed rows
        hinv -= self._product(hinv[:, q], m)
        hinv[q, :] = 0.0
        hinv[:, q] = 0.0
        if self._w is not None:
            self._w -= unit_product(self._w[:, q, :], m)
            self._w[:, q, :] = 0.0
        else:
            g_rows = self._gram[q, :]                   # G[Q,:] (a copy), G symmetric
            moved = self._product(g_rows.T, m)          # G[:,Q] M, and M^T G[Q,:] is its transpose
            self._gram -= moved
            self._gram -= moved.T
            self._gram += m.T @ (g_rows[:, q] @ m)
            self._gram[q, :] = 0.0
            self._gram[:, q] = 0.0
        self.live[q] = False
        self.local[units] = -1
        if self.live.sum() < COMPACT_BELOW * len(self.live):
            self._compact()

    def _product(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``a @ b`` into a reused buffer (a fresh rows x rows matrix per step is page-faulted in anew)."""
        shape = (a.shape[0], b.shape[1])
        if self._buffer.size < shape[0] * shape[1]:
            self._buffer = np.empty(shape[0] * shape[1])
        out = self._buffer[: shape[0] * shape[1]].reshape(shape)
        return np.matmul(a, b, out=out)

    def _compact(self) -> None:
        """Drop the rows and columns of removed units."""
        keep = np.flatnonzero(self.live)
        self._hinv = self._hinv[keep][:, keep]
        if self._w is not None:
            self._w = self._w[:, keep, :]
        else:
            self._gram = self._gram[keep][:, keep]
        self.rows = self.rows[keep]
        self.live = np.ones(len(keep), dtype=bool)
        self.local[self.rows] = np.arange(len(keep))
