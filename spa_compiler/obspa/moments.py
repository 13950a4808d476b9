"""Closed-form input moments of consumer layers, from BatchNorm parameters and (optionally) weights.

The data-free assumption behind ``bnstat`` is that every BatchNormalization
sees inputs it normalizes, so its output channel ``c`` is distributed like
``N(beta_c, gamma_c^2)``.  Instead of sampling that, this module propagates a
per-channel Gaussian model (mean vector, covariance matrix) through the graph
in closed form, with no onnxruntime run:

- graph inputs: ``N(0, I)``;
- BatchNormalization: mean ``beta``, covariance ``diag(gamma) R diag(gamma)``,
  where ``R`` is the correlation of its input (identity for ``bn``; for
  ``weights``, the correlation the producer's weights give its inputs:
  ``W Sigma W^T``, which is where cross-channel structure comes from);
- Relu: exact rectified-Gaussian mean and variance per channel; covariances
  scaled by the gating probabilities ``Phi(mu_i/s_i) Phi(mu_j/s_j)`` (the
  first-order, Price's-theorem value, exact for weak correlations);
- Add: sums of independent branches; Conv/Gemm with constant weights: linear
  maps of mean and covariance (spatial positions independent);
- pooling, Dropout, Identity, Flatten: moments unchanged (an approximation).

Any other op leaves the tensor unresolved (None); :mod:`statistics` then
measures those layers empirically.  A Conv consumer's H over its im2col
features is ``m m^T + Sigma (x) I_k`` (positions within a patch independent).
"""
from __future__ import annotations

from dataclasses import dataclass
from math import erf, sqrt
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from ..ir import const_values

PASS_THROUGH = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Dropout", "Identity", "Flatten")
EFFECTIVE_ROWS = 1 << 20  # closed-form statistics count as this many samples when merged with measured ones


@dataclass
class Moments:
    """A per-channel Gaussian model of a tensor: channel means and their covariance."""

    mean: np.ndarray  # (C,)
    cov: np.ndarray   # (C, C)

    @property
    def var(self) -> np.ndarray:
        return np.maximum(np.diag(self.cov), 0.0)


def _phi(z: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * z * z) / sqrt(2 * np.pi)


def _cdf(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.vectorize(erf)(z / sqrt(2.0)))


def relu_moments(mean: np.ndarray, var: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, variance and gating probability P(x > 0) of ``max(x, 0)`` for ``x ~ N(mean, var)``."""
    s = np.sqrt(np.maximum(var, 1e-24))
    a = mean / s
    p = _cdf(a)
    m1 = mean * p + s * _phi(a)
    m2 = (mean ** 2 + var) * p + mean * s * _phi(a)
    return m1, np.maximum(m2 - m1 ** 2, 0.0), p


def _correlation(cov: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.maximum(np.diag(cov), 1e-24))
    r = cov / d[:, None] / d[None, :]
    np.fill_diagonal(r, 1.0)
    return r


class MomentPropagator:
    """Moments of graph tensors, computed on demand and cached; ``correlated`` keeps off-diagonal terms."""

    def __init__(self, graph: gs.Graph, correlated: bool):
        self.graph = graph
        self.correlated = correlated
        self._cache: dict[str, Optional[Moments]] = {}
        self._inputs = {t.name for t in graph.inputs}

    def of(self, tensor: gs.Tensor) -> Optional[Moments]:
        if tensor.name not in self._cache:
            self._cache[tensor.name] = None  # guards cycles; the graph is a DAG, so only as a safety net
            moments = self._compute(tensor)
            if moments is not None and not self.correlated:
                moments = Moments(moments.mean, np.diag(moments.var))
            self._cache[tensor.name] = moments
        return self._cache[tensor.name]

    def _compute(self, tensor: gs.Tensor) -> Optional[Moments]:
        if tensor.name in self._inputs:
            shape = tensor.shape or []
            if len(shape) in (2, 4) and isinstance(shape[1], int):
                return Moments(np.zeros(shape[1]), np.eye(shape[1]))
            return None
        if len(tensor.inputs) != 1:
            return None
        node = tensor.inputs[0]
        if node.op in PASS_THROUGH:
            return self.of(node.inputs[0])
        handler = getattr(self, f"_op_{node.op}", None)
        return handler(node) if handler is not None else None

    def _op_BatchNormalization(self, node: gs.Node) -> Optional[Moments]:
        if not all(isinstance(node.inputs[i], gs.Constant) for i in (1, 2)):
            return None
        gamma, beta = (np.asarray(const_values(node.inputs[i]), dtype=np.float64).reshape(-1) for i in (1, 2))
        before = self.of(node.inputs[0]) if self.correlated else None
        r = _correlation(before.cov) if before is not None and len(before.mean) == len(gamma) else np.eye(len(gamma))
        return Moments(beta.copy(), gamma[:, None] * r * gamma[None, :])

    def _op_Relu(self, node: gs.Node) -> Optional[Moments]:
        x = self.of(node.inputs[0])
        if x is None:
            return None
        mean, var, gate = relu_moments(x.mean, x.var)
        cov = x.cov * gate[:, None] * gate[None, :]
        np.fill_diagonal(cov, var)
        return Moments(mean, cov)

    def _op_Add(self, node: gs.Node) -> Optional[Moments]:
        parts = []
        for t in node.inputs:
            if isinstance(t, gs.Constant):
                parts.append(("const", np.asarray(t.values, dtype=np.float64)))
            else:
                parts.append(("var", self.of(t)))
        variables = [m for kind, m in parts if kind == "var"]
        if not variables or any(m is None for m in variables) or len({len(m.mean) for m in variables}) != 1:
            return None
        mean = sum(m.mean for m in variables)
        cov = sum(m.cov for m in variables)
        for kind, value in parts:
            if kind == "const":
                flat = value.reshape(-1)
                if flat.size not in (1, len(mean)):
                    return None
                mean = mean + flat
        return Moments(mean, cov)

    _op_Sum = _op_Add

    def _op_Conv(self, node: gs.Node) -> Optional[Moments]:
        x = self.of(node.inputs[0])
        if x is None or int(node.attrs.get("group", 1)) != 1 or not isinstance(node.inputs[1], gs.Constant):
            return None
        w = np.asarray(node.inputs[1].values, dtype=np.float64)
        w = w.reshape(w.shape[0], w.shape[1], -1)
        if w.shape[1] != len(x.mean):
            return None
        mean = np.einsum("oik,i->o", w, x.mean)
        per_tap = w.transpose(2, 0, 1)  # (k, out, in): sum over taps of W_k Sigma W_k^T, as matrix products
        cov = np.tensordot(per_tap @ x.cov, per_tap, axes=([0, 2], [0, 2]))
        return Moments(mean + _bias(node, len(mean)), cov)

    def _op_Gemm(self, node: gs.Node) -> Optional[Moments]:
        x = self.of(node.inputs[0])
        if x is None or node.attrs.get("transA", 0) or not isinstance(node.inputs[1], gs.Constant):
            return None
        w = np.asarray(node.inputs[1].values, dtype=np.float64)
        w = w if node.attrs.get("transB", 0) else w.T  # (out, in)
        if w.shape[1] != len(x.mean):
            return None
        return Moments(w @ x.mean + _bias(node, w.shape[0]), w @ x.cov @ w.T)


def _bias(node: gs.Node, n: int) -> np.ndarray:
    if len(node.inputs) > 2 and isinstance(node.inputs[2], gs.Constant):
        b = np.asarray(node.inputs[2].values, dtype=np.float64).reshape(-1)
        if b.size in (1, n):
            return b
    return np.zeros(n)


def consumer_second_moment(moments: Moments, cols_per_channel: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, mean) over a consumer's features: ``m m^T + Sigma (x) I_k`` for k columns per channel."""
    k = cols_per_channel
    mean = np.repeat(moments.mean, k)
    h = np.kron(moments.cov, np.eye(k)) + np.outer(mean, mean)
    return h, mean
