"""Input statistics of the consumer layers: the second moment ``H = E[x x^T]`` and mean ``E[x]``.

OBSPA needs, for every boundary layer that reads a prunable group, the
second moment of its inputs (im2col patches for a Conv).  They come from
running the graph in onnxruntime with those inputs exposed as outputs,
streamed over batches in float64, on one of these *sources*:

- ``bnstat``: N(0,1) inputs with every BatchNormalization normalizing by the
  batch's own statistics, so activations sit on BN's beta and gamma (no data);
- ``synthetic``: N(0,1) inputs through the eval-mode graph (no data);
- ``calib``: the user's calibration inputs through the eval-mode graph;
- ``bn``: closed form from BatchNorm beta/gamma, channels independent
  (:mod:`spa_compiler.obspa.moments`, no run; layers it cannot reach are measured
  as ``bnstat``/``synthetic`` would);
- ``weights``: as ``bn``, with the cross-channel covariances that the
  producer layers' weights induce;
- ``identity``: no run at all, ``H = I`` and zero mean (magnitude pruning).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.rules import rule_for
from ..errors import UsageError
from ..ir import to_model
from ..progress import step

SOURCES = ("bnstat", "bn", "weights", "synthetic", "calib", "identity")
CLOSED_FORM = ("bn", "weights")
MAX_ROWS_PER_BATCH = 8192  # im2col rows kept per batch and layer (a seeded subsample beyond)


@dataclass
class LayerStats:
    """Streaming second moment and mean of one consumer layer's input features."""

    h: np.ndarray         # (features, features), float64, E[x x^T]
    mean: np.ndarray      # (features,) E[x]
    abs_mean: np.ndarray  # (features,) E[|x|], for activation-based criteria
    rows: int

    @classmethod
    def empty(cls, features: int) -> "LayerStats":
        return cls(np.zeros((features, features)), np.zeros(features), np.zeros(features), 0)

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        n = self.rows + len(x)
        keep = self.rows / n
        with np.errstate(over="ignore", invalid="ignore"):  # overflowing activations: judged downstream
            self.h = self.h * keep + (x.T @ x) / n
        self.mean = self.mean * keep + x.sum(axis=0) / n
        self.abs_mean = self.abs_mean * keep + np.abs(x).sum(axis=0) / n
        self.rows = n


def feature_rows(node: gs.Node, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The rows a layer multiplies by its weight (its rule's layout: im2col patches for Conv), subsampled."""
    rule = rule_for(node)
    if rule is None or not rule.is_consumer_layer(node):
        raise ValueError(f"no feature rows for {node.op}")
    rows = rule.feature_rows(node, x)
    if len(rows) > MAX_ROWS_PER_BATCH:
        rows = rows[rng.choice(len(rows), MAX_ROWS_PER_BATCH, replace=False)]
    return rows


def batch_stat_graph(graph: gs.Graph, opset: int) -> gs.Graph:
    """A copy of *graph* whose BatchNormalizations normalize by the batch's own mean and variance."""
    work = graph.copy()
    for k, node in enumerate([n for n in work.nodes if n.op == "BatchNormalization"]):
        x, y = node.inputs[0], node.outputs[0]
        rank = len(x.shape) if x.shape is not None else 4
        axes = [0] + list(range(2, rank))
        shape = [1, -1] + [1] * (rank - 2)
        scale, bias = (np.asarray(node.inputs[i].values).reshape(shape) for i in (1, 2))
        eps = float(node.attrs.get("epsilon", 1e-5))
        base = f"spa_bnstat{k}"

        def var(name):
            return gs.Variable(f"{base}_{name}", dtype=np.float32)

        mean, centered, square, variance, std, normed, scaled = (var(n) for n in (
            "mean", "centered", "square", "var", "std", "normed", "scaled"))
        eps_const = gs.Constant(f"{base}_eps", np.array(eps, np.float32))

        def reduce_mean(src, dst):
            if opset >= 18:  # axes moved from an attribute to an input
                return gs.Node("ReduceMean", inputs=[src, gs.Constant(f"{dst.name}_axes", np.array(axes, np.int64))],
                               outputs=[dst], attrs={"keepdims": 1})
            return gs.Node("ReduceMean", inputs=[src], outputs=[dst], attrs={"keepdims": 1, "axes": axes})

        work.nodes.extend([
            reduce_mean(x, mean),
            gs.Node("Sub", inputs=[x, mean], outputs=[centered]),
            gs.Node("Mul", inputs=[centered, centered], outputs=[square]),
            reduce_mean(square, variance),
            gs.Node("Sqrt", inputs=[_plus(work, variance, eps_const, base)], outputs=[std]),
            gs.Node("Div", inputs=[centered, std], outputs=[normed]),
            gs.Node("Mul", inputs=[normed, gs.Constant(f"{base}_scale", scale.astype(np.float32))],
                    outputs=[scaled]),
            gs.Node("Add", inputs=[scaled, gs.Constant(f"{base}_bias", bias.astype(np.float32))], outputs=[y]),
        ])
        node.outputs.clear()
    work.cleanup().toposort()
    return work


def _plus(graph: gs.Graph, a: gs.Variable, b: gs.Constant, base: str) -> gs.Variable:
    out = gs.Variable(f"{base}_var_eps", dtype=np.float32)
    graph.nodes.append(gs.Node("Add", inputs=[a, b], outputs=[out]))
    return out


def collect(compiled, consumers: list[gs.Node], source: str, calib: Optional[dict[str, np.ndarray]] = None,
            samples: int = 256, batch: int = 64, seed: int = 0, noise: str = "auto",
            progress=None) -> dict[str, LayerStats]:
    """Stream the statistics of every consumer's data input over *samples* inputs from *source*.

    *noise* (see :mod:`spa_compiler.inputvalues`) shapes the data-free inputs of ``bnstat`` and ``synthetic``.
    """
    from ..inputspec import active
    from ..runtime import session

    if source not in SOURCES:
        raise UsageError(f"unknown Hessian source {source!r} (use one of {', '.join(SOURCES)})")
    if source == "identity" or not consumers:
        return {}
    if source == "calib" and not calib:
        raise UsageError("the calib Hessian source needs --calib inputs")
    if source in CLOSED_FORM:
        stats = closed_form(compiled.graph, consumers, correlated=source == "weights")
        rest = [node for node in consumers if node.name not in stats]
        has_bn = any(n.op == "BatchNormalization" for n in compiled.graph.nodes)
        stats.update(collect(compiled, rest, "bnstat" if has_bn else "synthetic", calib, samples, batch, seed,
                             noise, progress))
        return stats
    graph = batch_stat_graph(compiled.graph, compiled.meta.opset) if source == "bnstat" else compiled.graph.copy()
    tensors = graph.tensors()
    wanted = {node.name: rule_for(node).statistics_input(node).name for node in consumers}  # int8: before quantizing
    outputs = list(dict.fromkeys(wanted.values()))
    for name in outputs:
        tensor = tensors[name]
        if tensor not in graph.outputs:
            graph.outputs.append(tensor)
    for tensor in graph.outputs:
        if tensor.dtype is None:
            tensor.dtype = np.float32
    sess = session(to_model(graph, compiled.meta))
    names = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(seed)
    stats: dict[str, LayerStats] = {}
    total = len(next(iter(calib.values()))) if source == "calib" else samples
    seen = 0
    spec = compiled.meta.input_spec
    if spec is not None and source != "calib":
        batch = min(batch, spec.statistics_batch(batch))  # large images: fewer per run, same memory
    with active(spec):  # noise at the input spec's dims (the dims verification and the cost model use)
        for feeds in _batches(sess, source, calib, samples, batch, seed, noise, spec):
            values = dict(zip(names, sess.run(None, feeds)))
            for node in consumers:
                rows = feature_rows(node, values[wanted[node.name]], rng)
                stats.setdefault(node.name, LayerStats.empty(rows.shape[1])).add(rows)
            seen += len(next(iter(feeds.values())))
            step(progress, min(seen, total), total, f"statistics ({source})")
    return stats


def _batches(sess, source: str, calib, samples: int, batch: int, seed: int,
             noise: str, spec=None) -> Iterator[dict[str, np.ndarray]]:
    """Feeds of the calibration inputs, or data-free feeds from the input spec (as every stage draws them).

    *spec* (:class:`inputspec.InputSpecs`, the compiled model's): its dims and each input's kind; a
    model without a symbolic batch gets *batch* samples per run as one longer sequence where it can.
    """
    from ..inputspec import for_session

    if source == "calib":
        names = [i.name for i in sess.get_inputs()]
        total = len(next(iter(calib.values())))
        for start in range(0, total, batch):
            yield {name: calib[name][start:start + batch] for name in names}
        return
    spec = spec if spec is not None else for_session(sess)
    done = 0
    while done < samples:
        run, held = spec.samples_per_run(max(min(batch, samples - done), 2))  # bnstat needs 2 samples a batch
        yield run.feeds(seed=seed + done, noise=noise)
        done += held


def closed_form(graph: gs.Graph, consumers: list[gs.Node], correlated: bool) -> dict[str, LayerStats]:
    """Statistics of the consumers whose inputs :class:`moments.MomentPropagator` can reach (others left out)."""
    from .moments import EFFECTIVE_ROWS, MomentPropagator, consumer_second_moment

    propagator = MomentPropagator(graph, correlated)
    stats = {}
    for node in consumers:
        rule = rule_for(node)
        if rule is None or not rule.is_consumer_layer(node) or not isinstance(node.inputs[1], gs.Constant):
            continue
        k = rule.columns_per_channel(node)
        if k is None:
            continue  # MatMul reads token tensors, whose moments the per-channel model does not describe
        moments = propagator.of(node.inputs[0])
        if moments is None:
            continue
        h, mean = consumer_second_moment(moments, k)
        stats[node.name] = LayerStats(h, mean, np.sqrt(np.diag(h)), EFFECTIVE_ROWS)
    return stats
