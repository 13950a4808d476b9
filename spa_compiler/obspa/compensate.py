"""OBSPA's transform: compensate consumer weights for the removed channels, then fold the shift into BN.

Given the plan and the consumer statistics, every consumer layer of a pruned
group gets the joint OBS update for all its removed columns (identical to
removing them one by one with inverse downdates), and a BatchNormalization
that reads that layer's output gets its running mean and variance corrected
for the predicted change of the layer's output distribution (data-free BN
recalibration).  Returns constant replacements for the rewrite; nothing is
changed in place.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis import CONSUMER, DependencyAnalysis, Group
from ..ir import all_nodes, constants_of
from .obs import (DEFAULT_DAMPING, MAX_DAMPING, ConsumerLayer, KroneckerHessian, compensate_units, damped_inverse,
                  robust_inverse)
from ..plan import Plan
from .blas import threads_for
from .parallel import pool_map
from .statistics import ChannelStats, LayerStats

VAR_RATIO_BOUNDS = (1e-3, 1e3)
# why a consumer was left uncompensated (the report's warnings say so, with the layers)
NONFINITE_STATS = "had non-finite input statistics (NaN/Inf activations): ranked by magnitude, not compensated"
NO_INVERSE = "had a Hessian with no finite inverse even at the damping cap: ranked by magnitude, not compensated"
NONFINITE_COMPENSATION = "gave non-finite compensated weights even at the damping cap: not compensated"
WORSE_THAN_NONE = "would have had a larger output error compensated than not (on the statistics): not compensated"
NONFINITE_FOLD = "gave a non-finite BatchNorm/bias fold: left unchanged"


@dataclass
class ObsContext:
    """Consumer layers of each group with their input statistics (identity when none were collected)."""

    graph: gs.Graph
    analysis: DependencyAnalysis
    stats: dict[str, LayerStats | ChannelStats] = field(default_factory=dict)
    damping: float = DEFAULT_DAMPING

    def __post_init__(self) -> None:
        self.fallbacks: dict[str, list[str]] = {}  # reason -> consumer layers left uncompensated for it
        self._lock = threading.Lock()
        self._nodes = {n.name: n for n in all_nodes(self.graph)}  # a body's consumer layers too
        self._constants = constants_of(self.graph)
        self._entries: dict[int, list[LayerEntry]] = {}

    def entries(self, group: Group) -> list["LayerEntry"]:
        """Every consumer of *group* that OBS can handle, with its statistics; built once per group.

        Scoring and compensation both need them (and the damped inverse, the
        expensive part), so they are cached here rather than rebuilt.
        """
        if group.id not in self._entries:
            out = []
            for param in group.params_by_role(CONSUMER):
                node = self._nodes.get(param.node)
                layer = None if node is None else ConsumerLayer.of(node, param, self._constants[param.tensor].values)
                if layer is None:
                    continue
                stats = self.stats.get(layer.statistics_key)
                if stats is not None and stats.features != layer.matrix_shape[1]:
                    stats = None
                if stats is not None and not (stats.hessian().finite() and np.all(np.isfinite(stats.mean))):
                    self.fall_back(NONFINITE_STATS, node.name)
                    stats = None
                if stats is not None:
                    dead = stats.hessian().diag() <= 0
                    layer.zero_columns(dead)  # inputs that are always zero contribute nothing: their weights cost nothing
                out.append(LayerEntry(layer, stats, self.damping, self))
            self._entries[group.id] = out
        return self._entries[group.id]

    def release(self) -> None:
        """Drop the statistics and everything made from them (inverse Hessians: on a ResNet-50 at 224x224 1 GB
        together) once no plan is left to score or compensate; the fallbacks stay for :meth:`warnings`."""
        self.stats = {}
        self._entries.clear()

    def fall_back(self, reason: str, layer: str) -> None:
        """Record that *layer* got no compensation (or no statistics) for *reason* (from any worker thread)."""
        with self._lock:
            names = self.fallbacks.setdefault(reason, [])
            if layer not in names:
                names.append(layer)

    def warnings(self) -> list[str]:
        """One line per fallback reason, naming the first layers, for the report (sorted: the workers of
        :mod:`.parallel` record them in no fixed order)."""
        lines = []
        for reason, layers in sorted(self.fallbacks.items()):
            layers = sorted(layers)
            shown = ", ".join(layers[:3]) + (f" and {len(layers) - 3} more" if len(layers) > 3 else "")
            lines.append(f"OBSPA: {len(layers)} consumer layer(s) {reason}: {shown}")
        return lines

    def constant(self, name: str) -> np.ndarray:
        return np.asarray(self._constants[name].values)

    def next_batchnorm(self, node: gs.Node) -> Optional[gs.Node]:
        """The BatchNormalization that alone reads *node*'s output, if any."""
        readers = node.outputs[0].outputs
        if len(readers) == 1 and readers[0].op == "BatchNormalization" and readers[0].inputs[0] is node.outputs[0]:
            return readers[0]
        return None


@dataclass
class LayerEntry:
    """One consumer layer with its input statistics: H and mean (identity and zero without statistics)."""

    layer: ConsumerLayer
    stats: Optional[LayerStats | ChannelStats]
    damping: float
    context: Optional[ObsContext] = None
    _hinv: Optional[np.ndarray] = None
    _hessian: Optional[KroneckerHessian] = None
    _power: Optional[np.ndarray] = None

    @property
    def hessian(self) -> KroneckerHessian:
        """H, exact or at channel granularity; the identity (per position and tap) without statistics.

        Made once (a channel-granularity H is built from its statistics on every call otherwise)."""
        if self._hessian is None:
            if self.stats is not None:
                self._hessian = self.stats.hessian()
            else:
                k = self.layer.cols_per_position
                self._hessian = KroneckerHessian.identity(self.layer.matrix_shape[1] // k, k)
        return self._hessian

    @property
    def mean(self) -> np.ndarray:
        return self.stats.mean if self.stats is not None else np.zeros(self.layer.matrix_shape[1])

    @property
    def output_power(self) -> np.ndarray:
        """``diag(W H W^T)`` of the dense weights, per output row (H's moments of the outputs; made once:
        the greedy's energy and every plan's BatchNorm fold read it)."""
        if self._power is None:
            self._power = self.hessian.power(self.layer.w)
        return self._power

    def units(self, positions: np.ndarray) -> np.ndarray:
        """The units of :attr:`hessian` (and of :attr:`hinv`) that removing *positions* removes."""
        return self.layer.units(positions, self.hessian)

    @property
    def hinv(self) -> np.ndarray:
        """The damped inverse of H's units matrix, computed once (do not modify it in place).

        Damping is raised where H is ill-conditioned (:func:`obs.robust_inverse`); where no finite
        inverse exists the layer keeps no statistics (identity: magnitude, no compensation).
        """
        if self._hinv is None:
            with threads_for(len(self.hessian.units)):
                hinv, self.damping = robust_inverse(self.hessian.units, self.damping)
            if hinv is None:
                self._note(NO_INVERSE)
                self.stats, self._hessian, self._power = None, None, None
                hinv = self.hessian.units  # the identity
            self._hinv = hinv
        return self._hinv

    def compact(self) -> None:
        """Keep H in float32 once its inverse and the dense output moments are made (the greedy calls this):
        from then on only the output moments of compensated weights read it (the BatchNorm fold and the
        guard against compensating for the worse), the weights themselves are solved from the inverse.
        Relative 6e-8 on those moments, far under H's sampling error; 250 MB on a ResNet-50 at 224x224."""
        if isinstance(self.stats, LayerStats) and self._hinv is not None and self._power is not None:
            self.stats.keep_in_float32()
            self._hessian = self.stats.hessian()

    def _note(self, reason: str) -> None:
        if self.context is not None:
            self.context.fall_back(reason, self.layer.node.name)

    def compensated(self, positions: np.ndarray) -> np.ndarray:
        """W with *positions* removed and the rest re-solved, never worse than plain removal and always finite
        (see :meth:`compensation`)."""
        return self.compensation(positions).w

    def compensation(self, positions: np.ndarray) -> "Compensation":
        """The weights to write for *positions* removed, and the output moments they give.

        A non-finite result is retried with damping x10 up to ``MAX_DAMPING``, then given up; a result
        whose output error on the measured statistics exceeds plain removal's is given up too.  Giving up
        means plain removal (the columns zeroed, the others untouched), recorded for the report.
        """
        with threads_for(max(len(self.hessian.units), self.layer.matrix_shape[0])):
            return self._compensation(positions)

    def _compensation(self, positions: np.ndarray) -> "Compensation":
        w0, hinv, damping, hessian = self.layer.w, self.hinv, self.damping, self.hessian
        units = self.units(positions)
        removed = w0.copy()
        removed[:, self.layer.columns(positions)] = 0.0
        while True:
            w1 = compensate_units(w0, hessian, hinv, units)
            if np.all(np.isfinite(w1)):
                break
            if damping >= MAX_DAMPING:
                self._note(NONFINITE_COMPENSATION)
                return self._outcome(w0, removed, units)
            damping = min(MAX_DAMPING, damping * 10)
            hinv = damped_inverse(hessian.units, damping)
        w1 = self.layer.representable(w1)  # integer weights: judged as they will be stored
        outcome = self._outcome(w0, w1)
        if self.stats is not None:  # the mean shift is folded downstream: compare output covariances
            if outcome.error(self.mean) > output_error(w0 - removed, hessian, self.mean) * (1 + 1e-9):
                self._note(WORSE_THAN_NONE)
                return self._outcome(w0, removed, units)
        return outcome

    def _outcome(self, w0: np.ndarray, w: np.ndarray, changed: Optional[np.ndarray] = None) -> "Compensation":
        """*w* (replacing the dense *w0*) with its output moments, from the dense ones and one product of the
        weight change with H (only its *changed* units' columns, when given): with ``D = W0 - W``,
        ``diag(W H W^T) = diag(W0 H W0^T) - 2 diag(W0 H D^T) + diag(D H D^T)`` (H symmetric), instead of
        two more products of whole weight matrices with H per plan (a third of a ResNet-50's compensation)."""
        hessian = self.hessian
        delta = w0 - w
        mixed = hessian.mixed(delta, changed)                        # D (units (x) taps)
        change = np.sum(mixed * delta, axis=1)                       # diag(D H D^T) without H's mean term
        dense = self.output_power if hessian.mean is None else self.output_power - (w0 @ hessian.mean) ** 2
        after = hessian.with_mean(w, dense - 2 * np.sum(mixed * w0, axis=1) + change)
        return Compensation(w, self.output_power, after, float(np.sum(hessian.with_mean(delta, change))), delta)


@dataclass
class Compensation:
    """A consumer's weights to write and what they do to its outputs under the statistics."""

    w: np.ndarray             # (out, features)
    power_before: np.ndarray  # diag(W0 H W0^T): each output's second moment with the dense weights
    power_after: np.ndarray   # diag(W H W^T)
    change_power: float       # tr(D H D^T), D = W0 - W
    delta: np.ndarray

    def error(self, mean: np.ndarray) -> float:
        """:func:`output_error` of the weight change: ``tr(D C D^T)``, C = H - m m^T."""
        return self.change_power - float(np.sum((self.delta @ mean) ** 2))


def compensate(ctx: ObsContext, plan: Plan, fold_batchnorm: bool = True) -> dict[str, np.ndarray]:
    """Constant replacements: compensated consumer weights and corrected BatchNorm statistics."""
    todo: list[tuple[LayerEntry, np.ndarray]] = []
    for gid, removed in plan.removed.items():
        group = ctx.analysis.groups[gid]
        gone = np.zeros(group.n_atoms, dtype=bool)
        gone[removed] = True
        for entry in ctx.entries(group):
            positions = np.flatnonzero(gone[group.atom_of[entry.layer.param.space]])
            if len(positions):
                todo.append((entry, positions))
    # the solves side by side on the cores, each handing back its weights in the constant's type and the
    # vectors its fold needs (all consumers' float64 weights at once: 400 MB on a ResNet-50); the folds, which
    # may add into one bias (an LSTM's W and R), in the serial order
    results = pool_map(lambda job: _solve(ctx, *job), todo,
                       cost=lambda job: float(np.prod(job[0].layer.matrix_shape)) * len(job[0].hessian.units))
    updates: dict[str, np.ndarray] = {}
    for (entry, _), (weights, fold) in zip(todo, results):
        layer = entry.layer
        updates[layer.param.tensor] = weights
        bn = ctx.next_batchnorm(layer.node) if fold_batchnorm else None
        if bn is not None:
            _fold_into_batchnorm(ctx, bn, fold, updates)
        else:
            _fold_into_bias(ctx, layer, fold, updates)
    # in the constants' own types (as the rewrite stores them): a ResNet-50's float64 updates took 200 MB per plan
    updates = {name: np.asarray(value, dtype=ctx.constant(name).dtype) for name, value in updates.items()}
    for name in [n for n, value in updates.items() if not np.all(np.isfinite(value))]:
        del updates[name]  # a fold from extreme statistics: leave that tensor as it was
        ctx.fall_back(NONFINITE_FOLD, name)
    return updates


@dataclass
class Fold:
    """What a consumer's compensation changes in its outputs, for the BatchNorm or bias fold downstream."""

    mean_before: np.ndarray   # W0 E[x] per output
    mean_after: np.ndarray    # W1 E[x]
    power_before: np.ndarray  # diag(W0 H W0^T)
    power_after: np.ndarray   # diag(W1 H W1^T)


def _solve(ctx: ObsContext, entry: LayerEntry, positions: np.ndarray) -> tuple[np.ndarray, Fold]:
    """One consumer's compensated weights, in its constant's type and layout, and its :class:`Fold`."""
    layer = entry.layer
    outcome = entry.compensation(positions)
    mean = entry.mean
    after = outcome.w @ mean
    fold = Fold(after + outcome.delta @ mean, after, outcome.power_before, outcome.power_after)  # W0 = W1 + D
    weights = np.asarray(layer.weight_values(outcome.w), dtype=ctx.constant(layer.param.tensor).dtype)
    return weights, fold


def output_error(delta: np.ndarray, hessian: KroneckerHessian, mean: np.ndarray) -> float:
    """``tr(delta C delta^T)``, C = H - m m^T: the output error energy of a weight change on inputs with
    second moment H and mean m (the part the mean fold downstream cannot take back)."""
    used = np.flatnonzero(np.any(hessian.split(delta) != 0, axis=(0, 2)))  # plain removal: a few units only
    if not len(used):
        return 0.0
    delta = hessian.split(delta)[:, used, :].reshape(len(delta), -1)
    mean = hessian.split(mean[None, :])[0, used, :].reshape(-1)
    return float(np.sum(hessian.restricted(used).power(delta)) - np.sum((delta @ mean) ** 2))


def _fold_into_bias(ctx: ObsContext, layer, fold: Fold, updates) -> None:
    """Keep the layer's output mean: ``b += (W0 - W1) E[x]`` (the removed inputs' mean contribution)."""
    bias_index = layer.bias_input()
    node = layer.node
    if bias_index is None or len(node.inputs) <= bias_index or not isinstance(node.inputs[bias_index], gs.Constant):
        return
    name = node.inputs[bias_index].name
    bias = np.asarray(updates.get(name, ctx.constant(name)), dtype=np.float64)  # W and R fold into one LSTM B
    shift = fold.mean_before - fold.mean_after
    folded = layer.folded_bias(bias, shift) if np.any(shift) else None
    if folded is not None:
        updates[name] = folded


def _fold_into_batchnorm(ctx: ObsContext, bn: gs.Node, fold: Fold, updates) -> None:
    """Shift BN's running mean by the predicted output mean change and scale its variance likewise."""
    mean_name, var_name = bn.inputs[3].name, bn.inputs[4].name
    running_mean, running_var = ctx.constant(mean_name).astype(np.float64), ctx.constant(var_name).astype(np.float64)
    if running_mean.shape[0] != len(fold.mean_before):
        return
    mu0, mu1 = fold.mean_before, fold.mean_after
    var0 = fold.power_before - mu0 ** 2
    var1 = fold.power_after - mu1 ** 2
    ratio = np.where(var0 > 1e-12, var1 / np.maximum(var0, 1e-12), 1.0)
    ratio = np.clip(ratio, *VAR_RATIO_BOUNDS)
    updates[mean_name] = running_mean - (mu0 - mu1)
    updates[var_name] = running_var * ratio
