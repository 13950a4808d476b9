"""Input statistics of the consumer layers: the second moment ``H = E[x x^T]`` and mean ``E[x]``.

OBSPA needs, for every boundary layer that reads a prunable group, the
second moment of its inputs (im2col patches for a Conv).  They come from
running the graph in onnxruntime with those inputs exposed as outputs,
streamed over batches whose exposed bytes are bounded (float32 products
summed in float64; Conv layers with many im2col features at channel
granularity, :class:`ChannelStats`), on one of these *sources*:

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

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.rules import rule_for
from ..errors import UsageError
from ..ir import to_model
from ..progress import step
from .blas import pinned, threads_for
from .bodies import expose, unstack
from .obs import KroneckerHessian
from .parallel import overlapped, parallel, pool_map

SOURCES = ("bnstat", "bn", "weights", "synthetic", "calib", "identity")
CLOSED_FORM = ("bn", "weights")
ROWS_PER_SAMPLE = 128  # im2col rows kept per sample and layer (a seeded subsample beyond)
EXPOSED_BYTES = 256 << 20  # consumer inputs one statistics run hands back at once (their sum bounds the memory)
MIN_BATCH = 8  # bnstat normalizes by each run's own batch statistics: not from fewer samples than this


class LayerStats:
    """Streaming second moment and mean of one consumer layer's input features.

    ``h`` (features x features, float64) is ``E[x x^T]``, ``mean`` ``E[x]`` and ``abs_mean`` ``E[|x|]`` (for
    activation-based criteria) over ``rows`` rows.  While rows stream in they are kept as sums, one pass
    over ``h`` per batch (a running mean scaled the 2304 x 2304 matrix and the batch's product as well),
    and turned into means in place when first read.
    """

    def __init__(self, h: np.ndarray, mean: np.ndarray, abs_mean: np.ndarray, rows: int):
        self._h, self._mean, self._abs_mean, self.rows = h, mean, abs_mean, rows
        self._summed = False  # whether the three hold sums over the rows (streaming) or means

    @classmethod
    def empty(cls, features: int) -> "LayerStats":
        return cls(np.zeros((features, features)), np.zeros(features), np.zeros(features), 0)

    @property
    def h(self) -> np.ndarray:
        return self._means()[0]

    @property
    def mean(self) -> np.ndarray:
        return self._means()[1]

    @property
    def abs_mean(self) -> np.ndarray:
        return self._means()[2]

    @property
    def features(self) -> int:
        return len(self._mean)

    def hessian(self) -> KroneckerHessian:
        return KroneckerHessian.exact(self.h)

    def add(self, x: np.ndarray) -> None:
        if not self._summed:
            for part in (self._h, self._mean, self._abs_mean):
                part *= self.rows
            self._summed = True
        with np.errstate(over="ignore", invalid="ignore"):  # overflowing activations: judged downstream
            self._h += _second_moment(x)
            self._mean += x.sum(axis=0, dtype=np.float64)
            self._abs_mean += np.abs(x).sum(axis=0, dtype=np.float64)
        self.rows += len(x)

    def keep_in_float32(self) -> None:
        """Hold ``h`` in float32 from here on (see :meth:`compensate.LayerEntry.compact`)."""
        self._h = self._means()[0].astype(np.float32)

    def _means(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._summed:
            with np.errstate(over="ignore", invalid="ignore"):
                for part in (self._h, self._mean, self._abs_mean):
                    part /= max(self.rows, 1)
            self._summed = False
        return self._h, self._mean, self._abs_mean


@dataclass
class ChannelStats:
    """Statistics of a large Conv layer at channel granularity: ``H ~ channel (x) taps`` (structured OBS).

    The exact im2col second moment of a 3x3 conv reading 512 channels is 4608 x 4608: streaming it
    costs ~170 GFLOP per batch of 8192 rows and its inverse and OBS downdates dominate a ResNet-50
    run.  Here ``channel`` is the C x C second moment of the input per pixel and ``tap_moment`` the
    kh*kw second moment of a patch's taps averaged over channels; :meth:`hessian` makes the Kronecker
    factors of the covariance (or of the raw moment) from them, means per channel, the same at every tap.
    """

    channel: np.ndarray       # (C, C) E[x_c x_d] over pixels
    tap_moment: np.ndarray    # (k, k) E[x_c,p x_c,q] over patches, averaged over channels
    channel_mean: np.ndarray  # (C,)
    channel_abs_mean: np.ndarray
    k: int
    rows: int
    tap_rows: int = 0

    @classmethod
    def empty(cls, channels: int, k: int) -> "ChannelStats":
        return cls(np.zeros((channels, channels)), np.zeros((k, k)), np.zeros(channels), np.zeros(channels), k, 0)

    @property
    def features(self) -> int:
        return len(self.channel_mean) * self.k

    @property
    def mean(self) -> np.ndarray:
        return np.repeat(self.channel_mean, self.k)

    @property
    def abs_mean(self) -> np.ndarray:
        return np.repeat(self.channel_abs_mean, self.k)

    def hessian(self) -> KroneckerHessian:
        """``covariance (x) taps + m m^T``, the mean kept apart (see :class:`KroneckerHessian`); taps
        normalized by the mean channel variance, so ``tr(H)`` is kept.  A channel of constant value
        keeps a tiny variance: removing it costs (almost) nothing once its mean is folded, where
        the damped inverse would treat a zero as an independent unit-variance input."""
        channel = self.channel - np.outer(self.channel_mean, self.channel_mean)
        variance = np.diag(channel)
        scale = float(np.mean(np.maximum(variance, 0.0)))
        channel[np.diag_indices_from(channel)] = np.maximum(variance, 1e-9 * scale)
        taps = self.tap_moment - float(np.mean(self.channel_mean ** 2))
        taps = taps / scale if scale > 0 else np.eye(self.k)
        return KroneckerHessian(channel, taps, self.mean)

    def add(self, pixels: np.ndarray, patches: np.ndarray) -> None:
        """*pixels*: (rows, C) input values per position; *patches*: (rows', C * k) im2col rows."""
        n = self.rows + len(pixels)
        keep = self.rows / n
        with np.errstate(over="ignore", invalid="ignore"):
            _blend(self.channel, keep, pixels, n)
            per_channel = patches.reshape(-1, self.k)  # (rows' * C, k): every channel's patch is a sample
            m = self.tap_rows + len(per_channel)
            _blend(self.tap_moment, self.tap_rows / m, per_channel, m)
        pixels = np.asarray(pixels, dtype=np.float64)
        self.channel_mean = self.channel_mean * keep + pixels.sum(axis=0) / n
        self.channel_abs_mean = self.channel_abs_mean * keep + np.abs(pixels).sum(axis=0) / n
        self.rows, self.tap_rows = n, m


def _second_moment(x: np.ndarray) -> np.ndarray:
    """``x^T x`` as a float32 product (half the time of a float64 GEMM; the sum over a few thousand rows
    loses ~1e-6 relative, far below OBS's damping)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x.T @ x


def _blend(moment: np.ndarray, keep: float, x: np.ndarray, n: int) -> None:
    """``moment = moment * keep + x^T x / n`` in place, summed in float64 (the running mean over *n* rows):
    no float64 copies of a 2304 x 2304 product per batch."""
    moment *= keep
    product = _second_moment(x)
    product *= np.float32(1.0 / n)
    moment += product


# Conv layers with more im2col features than this get channel-granularity statistics: a 3x3 conv reading 256
# channels (2304) or more.  Below it the exact second moment.  At 4096 the 2304-wide exact H of a ResNet-50's
# six layer3 3x3 convs were half its statistics products and most of its inversions (60 s, 2.0 GB); at 2048 it
# takes 46 s and 1.7 GB with the same output error over seeds 0-2 (relative 0.250 / 0.250 / 0.281 vs
# 0.237 / 0.248 / 0.287 exact), and open-nsfw, the one dev model with such layers, keeps its task at least as
# well (x0.75: 1.000 of its labels, relative error 0.03, vs 0.958 and 0.09 exact).  Not lower: every 3x3 conv at
# channel granularity broke the global ranking on a small ResNet (docs/obspa.md).
DENSE_FEATURES = 2048
TAP_ROWS = 1024        # patches per batch for a ChannelStats' tap correlation


def channel_granular(node: gs.Node, x: np.ndarray) -> Optional[int]:
    """Taps per channel where *node*'s statistics are kept at channel granularity, else None."""
    rule = rule_for(node)
    k = rule.columns_per_channel(node) if rule is not None and node.op == "Conv" else None
    if k is None or k < 2 or x.ndim not in (3, 4) or x.shape[1] * k <= DENSE_FEATURES:
        return None
    return k


def add_batch(stats: dict, node: gs.Node, x: np.ndarray, rng: np.random.Generator, limit: int) -> None:
    """Stream one batch of *node*'s input *x* (at most *limit* rows of it) into ``stats[node.name]``."""
    batch_rows(stats, node, x, rng, limit)()


def batch_rows(stats: dict, node: gs.Node, x: np.ndarray, rng: np.random.Generator,
               limit: int) -> Callable[[], None]:
    """Draw the rows of one batch of *node*'s input *x* (at most *limit*) and return the call that streams
    them into ``stats[node.name]``: draws in the caller's order, sums on any thread (:mod:`.parallel`)."""
    k = channel_granular(node, x)
    if k is None:
        rows = feature_rows(node, x, rng, limit)
        layer = stats.setdefault(node.name, LayerStats.empty(rows.shape[1]))

        def stream_rows() -> None:
            with threads_for(rows.shape[1]):
                layer.add(rows)
        return stream_rows
    channels = x.shape[1]
    pixels = at_most(np.moveaxis(x, 1, -1).reshape(-1, channels), limit, rng)
    patches = rule_for(node).feature_rows(node, x, TAP_ROWS, rng)
    channel_stats = stats.setdefault(node.name, ChannelStats.empty(channels, k))

    def stream_channels() -> None:
        with threads_for(channels):
            channel_stats.add(pixels, patches)
    return stream_channels


def recurrence_key(node_name: str) -> str:
    """The statistics key of what a recurrent node's R reads (its own hidden states)."""
    return f"{node_name}#recurrence"


def _recurrence_inputs(consumers: list[gs.Node]) -> dict[str, str]:
    """recurrence_key -> the output holding the hidden states R reads, for the recurrent consumers."""
    out = {}
    for node in consumers:
        tensor = getattr(rule_for(node), "recurrence_input", lambda n: None)(node)
        if tensor is not None:
            out[recurrence_key(node.name)] = tensor.name
    return out


def hidden_rows(stats: dict, key: str, x: np.ndarray, rng: np.random.Generator, limit: int) -> Callable[[], None]:
    """Draw at most *limit* rows of one batch of hidden states (last axis: the units) and return the call that
    streams them into ``stats[key]``, as :func:`batch_rows` does for a layer's input."""
    rows = at_most(x.reshape(-1, x.shape[-1]), limit, rng)
    layer = stats.setdefault(key, LayerStats.empty(rows.shape[1]))
    return lambda: layer.add(rows)


def feature_rows(node: gs.Node, x: np.ndarray, rng: np.random.Generator, limit: int) -> np.ndarray:
    """The rows a layer multiplies by its weight (its rule's layout: im2col patches for Conv), subsampled."""
    rule = rule_for(node)
    if rule is None or not rule.is_consumer_layer(node):
        raise ValueError(f"no feature rows for {node.op}")
    return at_most(rule.feature_rows(node, x, limit, rng), limit, rng)


def at_most(rows: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """*rows*, or *limit* of them drawn without replacement by *rng* (one seeded draw, the statistics' order)."""
    return rows[rng.choice(len(rows), limit, replace=False)] if len(rows) > limit else rows


def memory_batch(compiled, tensors: list[str], batch: int) -> int:
    """Samples per statistics run so that the exposed *tensors* stay within ``EXPOSED_BYTES`` (at least
    ``MIN_BATCH``): onnxruntime hands every consumer input of a run back at once, 36 MB per 224x224
    sample on a ResNet-50, 2.3 GB at the default batch of 64."""
    from ..shapes import concrete_shapes

    shapes = concrete_shapes(compiled.graph, compiled.spec)  # at the input spec: one sample (or its batch)
    per_sample = sum(4 * int(np.prod(shapes[name])) for name in tensors if shapes.get(name))
    return batch if per_sample == 0 else max(MIN_BATCH, min(batch, EXPOSED_BYTES // per_sample))


def batch_stat_graph(graph: gs.Graph, opset: int) -> gs.Graph:
    """A copy of *graph* whose BatchNormalizations normalize by the batch's own mean and variance."""
    work = graph.copy()
    for k, node in enumerate([n for n in work.nodes if n.op == "BatchNormalization"]):
        x, y = node.inputs[0], node.outputs[0]
        rank = len(x.shape) if x.shape is not None else 4
        axes = [0] + list(range(2, rank))
        shape = [1, -1] + [1] * (rank - 2)
        scale, bias = (np.asarray(node.inputs[i].values).reshape(shape) for i in (1, 2))
        dtype = scale.dtype  # an fp16 model's BatchNormalization computes in fp16: so does its replacement
        eps = float(node.attrs.get("epsilon", 1e-5))
        base = f"spa_bnstat{k}"

        def var(name):
            return gs.Variable(f"{base}_{name}", dtype=dtype)

        mean, centered, square, variance, std, normed, scaled = (var(n) for n in (
            "mean", "centered", "square", "var", "std", "normed", "scaled"))
        eps_const = gs.Constant(f"{base}_eps", np.array(eps, dtype))

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
            gs.Node("Mul", inputs=[normed, gs.Constant(f"{base}_scale", scale)],
                    outputs=[scaled]),
            gs.Node("Add", inputs=[scaled, gs.Constant(f"{base}_bias", bias)], outputs=[y]),
        ])
        node.outputs.clear()
    work.cleanup().toposort()
    return work


def _plus(graph: gs.Graph, a: gs.Variable, b: gs.Constant, base: str) -> gs.Variable:
    out = gs.Variable(f"{base}_var_eps", dtype=a.dtype)
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
    wanted = {node.name: rule_for(node).statistics_input(node).name for node in consumers}  # int8: before quantizing
    recurrences = _recurrence_inputs(consumers)
    # a body's own values are threaded out to graph outputs (obspa/bodies.py): name -> (output, stacked axes)
    exposed = expose(graph, list(dict.fromkeys(list(wanted.values()) + list(recurrences.values()))))
    wanted = {node: exposed[name] for node, name in wanted.items() if name in exposed}
    recurrences = {key: exposed[name] for key, name in recurrences.items() if name in exposed}
    outputs = list(dict.fromkeys(name for name, _ in [*wanted.values(), *recurrences.values()]))
    for tensor in graph.outputs:
        if tensor.dtype is None:
            tensor.dtype = np.float32
    sess = session(to_model(graph, compiled.meta), spinning=not parallel())  # it shares the cores: parallel.py
    names = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(seed)
    stats: dict[str, LayerStats] = {}
    total = len(next(iter(calib.values()))) if source == "calib" else samples
    seen = 0
    spec = compiled.meta.input_spec
    if spec is not None and source != "calib":
        batch = min(batch, spec.statistics_batch(batch))  # large images: fewer per run, same memory
    batch = memory_batch(compiled, outputs, batch)
    limit = ROWS_PER_SAMPLE * batch  # rows per run in proportion to the samples a run stands for (8192 at 64)
    with active(spec), pinned() if parallel() else nullcontext():  # noise at the input spec's dims
        runs = _batches(sess, source, calib, samples, batch, seed, noise, spec)
        for feeds, outs, start_next in overlapped(lambda feeds: sess.run(None, feeds), runs):
            values = dict(zip(names, outs))
            sums = []  # the draws here, in the serial order; the sums, the costly part, on every core
            for node in consumers:
                if node.name not in wanted:
                    continue
                output, stacked = wanted[node.name]
                x = unstack(values[output], stacked)
                if x is not None:  # None: a branch this run did not take
                    sums.append(batch_rows(stats, node, x, rng, limit))
            for key, (output, stacked) in recurrences.items():
                x = unstack(values[output], stacked)
                if x is not None:
                    sums.append(hidden_rows(stats, key, x, rng, limit))
            del values, outs  # the drawn rows keep what they need
            start_next()  # the next run meanwhile
            pool_map(lambda stream: stream(), sums)
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
        yield from calib_feeds(sess, calib, batch)
        return
    spec = spec if spec is not None else for_session(sess)
    done = 0
    while done < samples:
        run, held = spec.samples_per_run(max(min(batch, samples - done), 2))  # bnstat needs 2 samples a batch
        yield run.feeds(seed=seed + done, noise=noise)
        done += held


def calib_feeds(sess, calib: dict[str, np.ndarray], batch: int) -> Iterator[dict[str, np.ndarray]]:
    """The calibration inputs in runs of *batch* samples, or of the model's fixed batch size when its first
    input has one (``spa_compiler.torch`` exports at batch 1); a tail shorter than a fixed batch is left out."""
    names = [i.name for i in sess.get_inputs()]
    leading = sess.get_inputs()[0].shape[0] if sess.get_inputs() and sess.get_inputs()[0].shape else None
    size = leading if isinstance(leading, int) and leading > 0 else batch
    total = len(next(iter(calib.values())))
    total -= total % size if size != batch else 0
    for start in range(0, total, size):
        yield {name: calib[name][start:start + size] for name in names}


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
