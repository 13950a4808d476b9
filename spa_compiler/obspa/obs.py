"""Optimal Brain Surgeon for structured removal: costs, compensation and inverse downdates.

For a consumer layer with weight ``W`` (out x in, a Conv flattened to
``out x (in*kh*kw)``) and input second moment ``H``, removing the block of
input columns ``Q`` while re-solving the remaining weights costs

    dE(Q) = 1/2 tr( W[:,Q] ((H^-1)[Q,Q])^-1 W[:,Q]^T )

and the optimal update is ``W -= W[:,Q] ((H^-1)[Q,Q])^-1 (H^-1)[Q,:]`` (then
the columns Q are dropped).  Everything here is float64; ``H`` is damped by
``lambda * mean(diag H)`` and inverted by Cholesky, with an eigenvalue
fallback for matrices that are not numerically positive definite.

``H`` is held as :class:`KroneckerHessian`: exact, or at channel granularity for
large Conv layers (structured OBS), where the algebra runs on C x C matrices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis import ParamSlice
from ..analysis.rules import rule_for
from .blas import one_thread

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
        with one_thread():  # only a check; OpenBLAS's threaded potrf took 18x the CPU of one thread (n = 2304)
            np.linalg.cholesky(h)  # positive definite: the plain inverse (half the work of inverting the factor) is fine
        inverse = np.linalg.inv(h)
        return (inverse + inverse.T) / 2
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


@dataclass
class KroneckerHessian:
    """A layer Hessian ``H = units (x) taps + m m^T`` over its features, numbered unit-major (``u * k + tap``).

    OBS (costs, compensation, inverse) runs on ``units (x) taps``; the optional mean ``m`` only enters
    the output moments (:meth:`power`), which the folds downstream read.  Two shapes share this form:

    - exact: the units are the feature columns themselves, ``taps`` is ``[[1]]`` and ``units`` the
      measured second moment (no separate mean);
    - channel granularity (structured OBS): the units are a Conv's input channels, ``units`` their
      covariance per pixel, ``taps`` the (normalized) covariance of a patch's ``kh*kw`` taps and ``m``
      the channel means at every tap.  Removing a channel then removes whole units, its cost and the
      compensation of the other channels need only ``units`` (C x C instead of ``C*kh*kw`` squared:
      512 vs 4608 for a 3x3 conv reading 512 channels), and the compensation moves every tap of a
      removed channel onto the same tap of the kept ones.  Stationary activations have that form for
      their covariance, not for their raw second moment (a mean adds the same ``m_c m_d`` to every tap
      pair), so OBS minimizes the output *covariance* error there: exactly the error left once the
      output mean shift is folded into the next BatchNorm or bias, as compensation always does.
    """

    units: np.ndarray  # (U, U) float64
    taps: np.ndarray   # (k, k) float64
    mean: Optional[np.ndarray] = None  # (features,) or None

    @classmethod
    def exact(cls, h: np.ndarray) -> "KroneckerHessian":
        return cls(h, np.ones((1, 1)))

    @classmethod
    def identity(cls, units: int, taps: int) -> "KroneckerHessian":
        return cls(np.eye(units), np.eye(taps))

    @property
    def k(self) -> int:
        return len(self.taps)

    @property
    def features(self) -> int:
        return len(self.units) * self.k

    def diag(self) -> np.ndarray:
        diag = np.kron(np.diag(self.units), np.diag(self.taps))
        return diag if self.mean is None else diag + self.mean ** 2

    def dense(self) -> np.ndarray:
        """The full features x features matrix (small layers and tests: what the form avoids)."""
        h = np.kron(self.units, self.taps)
        return h if self.mean is None else h + np.outer(self.mean, self.mean)

    def finite(self) -> bool:
        parts = (self.units, self.taps) + (() if self.mean is None else (self.mean,))
        return all(bool(np.all(np.isfinite(p))) for p in parts)

    def restricted(self, units: np.ndarray) -> "KroneckerHessian":
        """The Hessian of the given units' features only."""
        mean = None if self.mean is None else self.split(self.mean[None, :])[0, units, :].reshape(-1)
        return KroneckerHessian(self.units[np.ix_(units, units)], self.taps, mean)

    def split(self, w: np.ndarray) -> np.ndarray:
        """(out, features) -> (out, U, k)."""
        return w.reshape(w.shape[0], len(self.units), self.k)

    def power(self, w: np.ndarray) -> np.ndarray:
        """Per output row ``w_i H w_i^T`` (the second moment of each output), through BLAS.

        A three-operand ``einsum`` would loop over out x in x in in C without BLAS:
        minutes on a 3x3 conv with 512 inputs.
        """
        return self.with_mean(w, np.sum(self.mixed(w) * w, axis=1))

    def with_mean(self, w: np.ndarray, quadratic: np.ndarray) -> np.ndarray:
        """:meth:`power` from its ``units (x) taps`` part *quadratic* (the mean term added, if any)."""
        return quadratic if self.mean is None else quadratic + (w @ self.mean) ** 2

    def mixed(self, w: np.ndarray, units: Optional[np.ndarray] = None) -> np.ndarray:
        """``W (units (x) taps)`` as an (out, features) matrix; with *units*, *w* is taken as zero outside
        those units' columns (a plain removal touches a few: a product that small)."""
        w3 = self.split(w)
        matrix = self.units
        if units is not None:
            w3, matrix = w3[:, units, :], matrix[units, :]
        if self.k == 1:
            return w3[:, :, 0] @ matrix
        mixed = taps_product(unit_product(w3, matrix), self.taps)  # W (x)_U units (x)_k taps
        return mixed.reshape(len(w), -1)

    def gram(self, w: np.ndarray) -> np.ndarray:
        """``G[u, v] = sum_o w_o,u taps w_o,v^T``: what the OBS costs of removing units read of *w* (no mean)."""
        if self.k == 1:
            return w.T @ w
        w3 = self.split(w)
        out, units, k = w3.shape
        a = np.swapaxes(taps_product(w3, self.taps), 0, 1).reshape(units, out * k)
        return a @ np.swapaxes(w3, 0, 1).reshape(units, out * k).T


def unit_product(w3: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(out, Q, k) weights times a (Q, U) matrix over their units, every tap alike: (out, U, k), as one GEMM.

    The stacked product (``swapaxes(w3) @ matrix``, one k-row product per output) is a matrix-vector product
    per output row at k = 1: 10-30x slower on a 2304-wide layer (it reads *matrix* once per output)."""
    out, q, k = w3.shape
    flat = np.swapaxes(w3, 1, 2).reshape(out * k, q)
    return np.swapaxes((flat @ matrix).reshape(out, k, matrix.shape[1]), 1, 2)


def taps_product(w: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Weights whose last axis is the k taps (out, U, k, or any leading axes) times the (k, k) tap matrix, as
    one GEMM over every row (a stacked product runs one tiny product per output)."""
    return (np.reshape(w, (-1, w.shape[-1])) @ taps).reshape(w.shape)


def compensate_units(w: np.ndarray, hessian: KroneckerHessian, hinv: np.ndarray, units: np.ndarray) -> np.ndarray:
    """*w* (out x features) with *units* removed and the rest re-solved: ``W -= W[:,Q] M`` per tap."""
    w3 = hessian.split(w)
    m = np.linalg.solve(hinv[np.ix_(units, units)], hinv[units, :])           # (|Q|, U)
    # one GEMM over every (row, tap): a batched product per row is a matrix-vector loop (3.5x slower for
    # an LSTM's 2048 gate rows, where the recurrent sensitivity probes compensate dozens of plans)
    moved = unit_product(w3[:, units, :], m)                                 # (out, U, k)
    out = w3 - moved
    out[:, units, :] = 0.0
    return out.reshape(w.shape)


@dataclass
class ConsumerLayer:
    """A boundary layer reading a group: its weight as an (out x features) matrix and how positions map to columns.

    :attr:`w` hands the matrix out in float64, for the solves; it is kept in float32 where that holds it
    exactly (float32 and float16 weights: half the memory, 95 MB on a ResNet-50 whose every consumer is kept
    until the last plan is compensated)."""

    node: gs.Node
    param: ParamSlice
    shape: tuple[int, ...]
    stored: np.ndarray     # (out, features): float64, or float32 holding it exactly
    cols_per_position: int

    @classmethod
    def of(cls, node: gs.Node, param: ParamSlice, values: np.ndarray) -> Optional["ConsumerLayer"]:
        original = np.asarray(values)
        values = np.asarray(original, dtype=np.float64)
        rule = rule_for(node)
        view = rule.consumer_matrix(node, param, values) if rule is not None and rule.is_consumer_layer(node) \
            else None
        if view is None:
            return None
        w, cols_per_position = view
        if original.dtype in (np.float32, np.float16):
            compact = w.astype(np.float32)
            if np.array_equal(compact, w):  # a rule that computed its matrix keeps float64
                w = compact
        return cls(node, param, values.shape, w, cols_per_position)

    @property
    def w(self) -> np.ndarray:
        """The (out x features) weight matrix in float64 (a copy where it is kept in float32): read it once
        per solve and pass it on, each access may convert the whole matrix."""
        return self.stored if self.stored.dtype == np.float64 else self.stored.astype(np.float64)

    def w_copy(self) -> np.ndarray:
        """A float64 copy of :attr:`w` to change in place (one conversion, not a conversion and a copy)."""
        return self.stored.astype(np.float64)  # astype copies, float64 included

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return self.stored.shape

    def zero_columns(self, columns: np.ndarray) -> None:
        """Set the weight columns *columns* (a mask or indices) to zero in place."""
        self.stored[:, columns] = 0.0

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
        """Whether the node's statistics describe this slice's inputs (a recurrence's R: no, its own)."""
        return rule_for(self.node).measures(self.node, self.param)

    @property
    def statistics_key(self) -> str:
        """The key of this slice's input statistics (:func:`statistics.recurrence_key` for a recurrence's R)."""
        from .statistics import recurrence_key

        return self.node.name if self.measured else recurrence_key(self.node.name)

    def bias_input(self):
        """Input position of the bias the removed inputs' mean is folded into (None: the layer has none)."""
        return rule_for(self.node).bias_input(self.node)

    def folded_bias(self, bias: np.ndarray, shift: np.ndarray) -> Optional[np.ndarray]:
        """*bias* with the output mean *shift* folded in, in the bias's layout (None: it cannot take it)."""
        return rule_for(self.node).folded_bias(self.node, bias, shift)

    def units(self, positions: np.ndarray, hessian: KroneckerHessian) -> np.ndarray:
        """The units of *hessian* that the given positions occupy: their columns, or the positions
        themselves where a unit is a whole channel (``hessian.k`` columns per position)."""
        if hessian.k == 1:
            return self.columns(positions)
        if hessian.k != self.cols_per_position:
            raise ValueError(f"{self.node.name}: {hessian.k} taps per unit for {self.cols_per_position} columns")
        return np.asarray(positions)
