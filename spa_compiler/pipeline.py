"""The compiler's stages: load -> normalize -> analyze, score, plan, rewrite (and the statistics helpers).

The one driver that runs them in order, with statistics, compensation,
recalibration, verification and the report, is :func:`spa_compiler.api.prune_with`.

``Compiled`` keeps the normalized graph and its analysis so that several
plans (a MACs search, the oracle, the CLI's ``groups``) reuse one analysis.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import registry
from .analysis import DependencyAnalysis, analyze
from .analysis.rules import rule_for
from .cost import MacsEstimator, totals
from .criterion import Criterion
from .errors import CompileError, ModelLoadError, NothingToPruneError, SpacError, UsageError
from .importance import REDUCTIONS, ScoringContext
from .ir import ModelMeta, all_nodes, constants_of
from .modelio import ModelLike, load_model
from .normalize import normalize
from .plan import Plan, PlanOptions, make_plan, search_ratio
from .progress import step
from .rewrite import RewriteLog, kept_fraction, rewrite
from .shapes import concrete_shapes
from .weights import release_pages


@dataclass
class Compiled:
    """A normalized model with its dependency analysis (analysis facts change nothing)."""

    graph: gs.Graph
    meta: ModelMeta
    analysis: DependencyAnalysis
    notes: list[str] = field(default_factory=list)
    source: str = "<in-memory model>"
    dense: Optional[object] = None  # densecheck.DenseRun: the dense model's run at the input spec

    @property
    def spec(self):
        """The input spec (:class:`inputspec.InputSpecs`) every stage uses."""
        return self.meta.input_spec

    def to_model(self) -> onnx.ModelProto:
        from .ir import to_model

        return to_model(self.graph, self.meta)


def compile_model(source: ModelLike, prune_hidden: bool = False, head_dims: bool = False,
                  input_shapes=None, run_dense: bool = False, measure: Optional[tuple[int, str]] = None) -> Compiled:
    """Load, normalize and analyse a model (``prune_hidden``: see :func:`analysis.analyze`).

    *input_shapes* (``{"images": (1, 3, 320, 320)}``) fix the input spec; with
    *run_dense* the dense model is checked to run at it first (see :mod:`densecheck`),
    and with *measure* (seed, noise) that run also records the fidelity reference.
    """
    from .densecheck import dense_runner
    from .inputspec import choose, declared_inputs

    model = load_model(source)
    where = "<in-memory model>" if isinstance(source, onnx.ModelProto) else str(source)
    spec = choose(declared_inputs(model), input_shapes, {p.key: p.value for p in model.metadata_props}, where=where)
    runs: list = []
    dense_run = dense_runner(model, source, input_shapes, measure)

    def run_dense_model(facts):
        """Called after every normalization but the last shape inference: hostile shapes are refused by then."""
        runs.append(dense_run(facts))
        return runs[-1].spec

    try:
        normalized = normalize(model, copy=isinstance(source, onnx.ModelProto),
                               spec=run_dense_model if run_dense else spec)
        del model  # the gs graph holds what is needed; let the protobuf go
        analysis = analyze(normalized.graph, normalized.meta.opset, prune_hidden=prune_hidden, head_dims=head_dims)
        check_param_sizes(normalized.graph, analysis)
    except SpacError as exc:
        raise type(exc)(str(exc) if str(exc).startswith(f"{where}: ") else f"{where}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - never a traceback for a model we accepted
        raise CompileError(f"{where}: analysis failed ({type(exc).__name__}: {exc})") from exc
    return Compiled(normalized.graph, normalized.meta, analysis, normalized.notes, where, runs[-1] if runs else None)


def check_param_sizes(graph: gs.Graph, analysis: DependencyAnalysis) -> None:
    """Every parameter of a prunable group has the group's width along its axis (a bias of the wrong
    length cannot run; without this it fails inside a criterion as an internal error)."""
    constants = constants_of(graph)
    for group in analysis.prunable_groups:
        for param in group.params:
            shape = list(getattr(constants.get(param.tensor), "shape", None) or [])
            want = group.sizes[param.space]
            if param.tensor in constants and (param.axis >= len(shape) or shape[param.axis] != want):
                have = shape[param.axis] if param.axis < len(shape) else "no"
                raise ModelLoadError(f"node {param.node} ({param.op}): {param.tensor} has {have} entries along "
                                     f"axis {param.axis}, its channels number {want}")


def score_groups(compiled: Compiled, criterion: Union[str, registry.PassInfo] = "l2", seed: int = 0,
                 reduce: str = "sum", groups=None, obs=None, progress=None) -> dict[int, np.ndarray]:
    """Run a criterion pass (its registered name, or the registry entry already looked up) on every prunable group.

    *obs*: statistics for passes that declare ``needs_statistics`` (identity statistics when not given).
    """
    if reduce not in REDUCTIONS:
        raise CompileError(f"unknown reduction {reduce!r}")
    info = registry.get("criterion", criterion) if isinstance(criterion, str) else criterion
    criterion = info.name
    pass_: Criterion = info.factory(reduce=reduce)
    if obs is None and pass_.needs_statistics:
        from .obspa.compensate import ObsContext

        obs = ObsContext(compiled.graph, compiled.analysis)  # identity statistics
    ctx = ScoringContext(compiled.graph, compiled.analysis, np.random.default_rng(seed), obs, progress)
    todo = list(groups if groups is not None else compiled.analysis.prunable_groups)
    finished = 0

    def done(index: int, values: np.ndarray) -> None:
        nonlocal finished
        group = todo[index]
        if np.shape(values) != (group.n_atoms,):
            raise CompileError(f"criterion {criterion} returned {np.shape(values)} scores for "
                               f"{group.n_atoms} atoms of group {group.id}")
        release_pages()  # weights mapped from disk: keep only one group's pages resident
        finished += 1
        step(progress, finished, len(todo), f"scoring ({criterion})")

    values = pass_.score_all(ctx, todo, done)
    return {group.id: np.asarray(v, dtype=np.float64) for group, v in zip(todo, values)}


def plan_pruning(compiled: Compiled, scores: dict[int, np.ndarray], options: PlanOptions,
                 target_macs: Optional[float] = None) -> Plan:
    """A plan for a ratio, or the smallest ratio whose estimated MACs meet *target_macs*."""
    if target_macs is None:
        return make_plan(compiled.analysis, scores, options)
    shapes = concrete_shapes(compiled.graph, compiled.spec)
    _, dense = totals(compiled.graph, shapes)
    estimate = MacsEstimator(compiled.graph, shapes)

    def make(ratio: float) -> Plan:
        return make_plan(compiled.analysis, scores, PlanOptions(**{**options.__dict__, "ratio": ratio}))

    def cost(plan: Plan) -> float:
        return estimate(kept_fraction(compiled.analysis, plan)) / max(dense, 1)

    plan, _ = search_ratio(make, cost, target_macs)
    return plan


def apply_plan(compiled: Compiled, plan: Plan, updates: Optional[dict[str, np.ndarray]] = None
               ) -> tuple[onnx.ModelProto, gs.Graph, RewriteLog]:
    """Rewrite a copy of the compiled graph; the compiled graph stays the dense original."""
    from .ir import to_model

    graph, log = rewrite(compiled.graph, compiled.meta, compiled.analysis, plan, updates)
    return to_model(graph, compiled.meta), graph, log


def require_prunable(compiled: Compiled) -> None:
    if not compiled.analysis.prunable_groups:
        reasons = sorted({g.frozen[0] for g in compiled.analysis.groups if g.frozen})[:3]
        hint = f" (e.g. {'; '.join(reasons)})" if reasons else ""
        raise NothingToPruneError(f"{compiled.source}: no prunable group: every group is frozen{hint}")


def consumer_nodes(compiled: Compiled) -> list[gs.Node]:
    """Consumer layers (Conv, Gemm, MatMul) of every prunable group: whose inputs OBS needs statistics of."""
    from .analysis import CONSUMER

    nodes = {n.name: n for n in all_nodes(compiled.graph)}  # layers inside If/Loop/Scan bodies too
    wanted = {p.node for g in compiled.analysis.prunable_groups for p in g.params_by_role(CONSUMER)}
    return [nodes[name] for name in sorted(wanted) if name in nodes and _is_consumer_layer(nodes[name])]


def _is_consumer_layer(node: gs.Node) -> bool:
    rule = rule_for(node)
    return rule is not None and rule.is_consumer_layer(node)


def choose_hessian_source(compiled: Compiled, requested: Optional[str], calib) -> tuple[str, str]:
    """The statistics source and why: calibration data, BN batch statistics, or plain noise."""
    has_bn = any(n.op == "BatchNormalization" for n in compiled.graph.nodes)
    if requested:
        return requested, "requested"
    if calib is not None:
        return "calib", "calibration inputs given"
    if has_bn:
        return "bnstat", "BatchNormalization present: noise normalized by batch statistics"
    return "synthetic", "no BatchNormalization: noise through the eval-mode graph"


def bn_free_conv_warning(compiled: Compiled) -> Optional[str]:
    ops = {n.op for n in compiled.graph.nodes}
    if "Conv" in ops and "BatchNormalization" not in ops:
        return ("no BatchNormalization in this convolutional model (folded at export?): OBSPA falls back to "
                "plain-noise statistics and keeps less accuracy; export with BatchNorm kept "
                "(torch.onnx.export(..., do_constant_folding=False) or dynamo optimize=False)")
    return None


def load_calib(path, compiled: Compiled) -> dict[str, np.ndarray]:
    """Calibration inputs from an .npz: arrays keyed by graph input name, or one array for a single input."""
    import os

    names = [t.name for t in compiled.graph.inputs]
    if isinstance(path, dict):
        data = dict(path)
    else:
        if not os.path.isfile(str(path)):
            raise UsageError(f"{path}: calibration file not found")
        try:
            with np.load(str(path), allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        except Exception as exc:  # noqa: BLE001 - zip/pickle/format errors all mean "not a usable npz"
            raise UsageError(f"{path}: not a readable .npz of arrays ({type(exc).__name__})") from None
    if not data:
        raise UsageError(f"{path}: no arrays in the calibration file")
    if not set(names) <= set(data):
        if len(data) == 1 and len(names) == 1:
            data = {names[0]: next(iter(data.values()))}
        else:
            raise UsageError(f"{path}: calibration arrays {sorted(data)} do not match the model inputs {names}")
    lengths = {len(data[n]) for n in names}
    if len(lengths) != 1 or 0 in lengths:
        raise UsageError(f"{path}: calibration arrays must share a non-zero first (batch) dimension")
    for tensor in compiled.graph.inputs:
        rank = len(tensor.shape or [])
        if rank and data[tensor.name].ndim != rank:
            raise UsageError(f"{path}: array {tensor.name} has rank {data[tensor.name].ndim}, the model input has {rank}")
    return {n: np.ascontiguousarray(data[n]) for n in names}
