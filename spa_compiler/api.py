"""The Python API: ``prune()`` as an export-time pass, returning the model and a report."""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import onnx

from . import fidelity
from .analysis import PRODUCER
from .budget import MaxErrorSearch
from .obspa import statistics
from .obspa.compensate import ObsContext, compensate as compensation
from .cost import totals
from .densecheck import verify_like_dense
from .errors import ModelLoadError, UsageError
from .finite import check_input_weights, guard_written_model, guard_written_weights
from .ir import to_model
from .jsonout import to_json
from .latency.driver import SpeedCheck
from .modelio import (EXTERNAL_DATA_THRESHOLD, ModelLike, check_input_file, check_output_path, check_written_files,
                      staged_output, uses_external_data, write_graph, write_proto)
from .pipeline import (Compiled, bn_free_conv_warning, choose_hessian_source, compile_model,
                       consumer_nodes, load_calib, plan_pruning, require_prunable, score_groups)
from .options import PruneOptions
from .plan import SNAP_MIN_CHANNELS, SNAP_WIDE_CHANNELS, Plan, PlanOptions
from .ranking import CANDIDATES as RANKING_CANDIDATES, measured_ranking
from .rewrite import rewrite
from .runtime import check_checker, check_pruned
from .shapes import concrete_shapes
from .weights import release_pages, total_constant_bytes


@dataclass
class PruneResult:
    """The pruned model, the plan that produced it, and a JSON-ready report."""

    model: onnx.ModelProto
    plan: Plan
    report: dict
    compiled: Compiled = field(repr=False)
    scores: dict = field(default_factory=dict, repr=False)  # group id -> per-atom scores of the criterion


def prune(model: ModelLike, ratio: float = 0.5, criterion: str = "l2", *, global_ranking: Optional[bool] = None,
          round_to: Optional[int] = None, exclude: Sequence[str] = (), target_macs: Optional[float] = None,
          max_group_ratio: float = 0.9, reduce: str = "sum", seed: int = 0, verify: bool = True,
          prune_hidden: bool = False, prune_head_dims: bool = False, hessian: Optional[str] = None, calib=None, samples: int = 256,
          damping: float = 0.01, compensate: Optional[bool] = None, recalibrate_bn: bool = False, noise: str = "auto",
          max_error: Optional[float] = None, output: Optional[str] = None, force: bool = False,
          report_path: Optional[str] = None, input_shapes=None, target_speedup: Optional[float] = None,
          target_latency: Optional[float] = None, provider: str = "cpu", threads: int = 0, check_speed: bool = False,
          progress: Optional[Callable[[str], None]] = None) -> PruneResult:
    """Prune whole channels of *model* (a path or an ``onnx.ModelProto``).

    ratio: fraction of each group's channels removed (``global_ranking=False``), or of all channels
    (``True``); None (the default) takes the MACs of the criterion's own plan (per group for l2, global for
    obspa, whose energy-normalized costs compare across layers) and writes that plan unless another
    allocation at those MACs (per-group, or by measured sensitivity) measures a clearly lower output error
    on the measurement inputs, never one whose outputs collapsed (:mod:`ranking`; not without verification); target_macs: instead of a ratio, prune until the MACs
    are at most this fraction of the original; max_error: instead of a ratio, prune as much as possible
    while the outputs' relative L2 error on the measurement inputs stays at most this (with target_macs:
    the MACs target is the goal, never beyond this error; see :mod:`budget`); prune_hidden: also prune a
    transformer's residual-stream width (inexact through LayerNorm, opt-in); input_shapes: dims of the
    inputs (``{"images": (1, 3, 320, 320)}``) that shape inference, MACs, statistics and verification use
    (chosen where not given; the dense model must run at them); target_speedup / target_latency (ms):
    instead of a ratio, plan widths and budget on measured latency tables for *provider* ('cpu', 'cuda',
    'auto') with *threads*, then benchmark dense vs pruned and replan while short (report: ``speed``; see
    :mod:`spa_compiler.latency`); check_speed: benchmark any plan and warn when it is slower than dense.
    With *output*, the model is
    written atomically after verification, together with the JSON report at *report_path*
    (both or neither).  Raises :class:`SpacError`
    subclasses with one-line messages.
    """
    options = PruneOptions(ratio=ratio, criterion=criterion, global_ranking=global_ranking, round_to=round_to,
                           exclude=exclude, target_macs=target_macs, max_group_ratio=max_group_ratio, reduce=reduce,
                           seed=seed, verify=verify, prune_hidden=prune_hidden, prune_head_dims=prune_head_dims,
                           hessian=hessian, calib=calib, samples=samples, damping=damping, compensate=compensate,
                           recalibrate_bn=recalibrate_bn, noise=noise, max_error=max_error, output=output, force=force,
                           report_path=report_path, input_shapes=input_shapes, target_speedup=target_speedup,
                           target_latency=target_latency, provider=provider, threads=threads, check_speed=check_speed)
    return prune_with(model, options, progress)


def prune_with(model: ModelLike, opts: PruneOptions, progress: Optional[Callable[[str], None]] = None,
               freeze: Optional[Callable[[Compiled], dict[int, str]]] = None) -> PruneResult:
    """:func:`prune` with its options already built (and so validated): what the CLI calls.

    *freeze*: a hook given the analysed model, returning {group id: reason} for groups to freeze on top of
    the analysis (spa_compiler.torch freezes groups whose constants are not module parameters).

    The one driver: analysis -> statistics -> score -> plan -> compensate -> rewrite -> recalibrate -> report
    -> verify and write.  The stages themselves live in :mod:`.pipeline` and :mod:`.obspa`.
    """
    say = progress or (lambda _msg: None)
    ratio, criterion, target_macs, calib, output, report_path, verify = (
        opts.ratio, opts.criterion, opts.target_macs, opts.calib, opts.output, opts.report_path, opts.verify)
    options = opts.plan_options()
    input_path = None if isinstance(model, onnx.ModelProto) else str(model)
    if input_path is not None:
        check_input_file(input_path)
    if output is not None:
        check_written_files(output, report_path, input_path, calib, opts.force)
    elif report_path is not None:
        check_output_path(report_path, input_path, what="report")
    t0 = time.perf_counter()
    say("analyzing")
    measuring = (verify or opts.max_error is not None) and calib is None  # the dense run records the reference
    compiled = compile_model(model, prune_hidden=opts.prune_hidden, head_dims=opts.prune_head_dims,
                             input_shapes=opts.input_shapes, run_dense=True,
                             measure=(opts.seed, opts.noise) if measuring else None)
    for gid, why in (freeze(compiled) if freeze is not None else {}).items():
        compiled.analysis.groups[gid].frozen.append(why)
    require_prunable(compiled)
    parameters = {p.tensor for g in compiled.analysis.groups for p in g.params}
    nonfinite, finite_warnings = check_input_weights(compiled.graph, parameters, opts.force)
    t1 = time.perf_counter()
    compensating = opts.compensating
    warnings, hessian_info, obs = [], None, None
    calib_data = load_calib(calib, compiled) if calib is not None else None
    if opts.needs_statistics:
        obs, hessian_info, warnings = _statistics(compiled, opts.hessian, calib_data, opts.samples, opts.seed,
                                                  opts.damping, opts.noise, say)
    say(f"scoring {len(compiled.analysis.prunable_groups)} groups with {criterion}")
    scores = score_groups(compiled, opts.criterion_pass, seed=opts.seed, reduce=opts.reduce, obs=obs, progress=progress)
    max_error = opts.max_error
    measurement = None
    if verify or max_error is not None:
        say("measuring the dense model on the measurement inputs")
        measurement, unmeasured = fidelity.try_measure_dense(input_path or model, calib_data, opts.seed, opts.noise,
                                                             required=max_error is not None, spec=compiled.spec,
                                                             dense=compiled.dense)
        warnings = warnings + unmeasured

    context = (obs or ObsContext(compiled.graph, compiled.analysis, {}, opts.damping)) if compensating else None

    # The last plans' updates: the ranking measures up to RANKING_CANDIDATES plans compensated and then writes
    # one of them, whose compensation (the costly part on large models) must not be solved twice.
    compensated: dict = {}

    def updates_for(plan: Plan):
        if context is None:
            return None
        key = tuple((gid, atoms.tobytes()) for gid, atoms in sorted(plan.removed.items()))
        if key not in compensated:
            if len(compensated) >= RANKING_CANDIDATES:
                compensated.pop(next(iter(compensated)))
            compensated[key] = compensation(context, plan)
        return compensated[key]

    search, ranking = None, None
    speed = SpeedCheck(opts, compiled, input_path or model, say) if opts.latency_target or opts.check_speed else None
    if opts.latency_target:
        plan = speed.plan_for_target(scores, options, measurement, updates_for)
    elif max_error is not None:
        search = MaxErrorSearch(compiled, scores, options, measurement, max_error, target_macs, updates_for, progress)
        plan = _within_max_error(search, target_macs, say)
    else:
        plan = plan_pruning(compiled, scores, options, target_macs)
        if not plan.removed and options.snap > 1:  # the snap gave every channel back: a light ratio keeps exact widths
            options = replace(options, snap=1)
            plan = plan_pruning(compiled, scores, options, target_macs)
        if not plan.removed and ratio > 0 and target_macs is None:
            raise UsageError(f"{compiled.source}: ratio {ratio} removes no channel (groups too small or excluded)")
        if opts.global_ranking is None and plan.removed and measurement is not None:
            plan, options, ranking = measured_ranking(compiled, scores, opts, plan, measurement, updates_for, say,
                                                      progress, compensating=context is not None)
            if context is not None and not ranking["compensated"]:
                context, compensating = None, False
                chosen = ranking["chosen"]
                warnings = warnings + [f"compensation raised the measured output error ({chosen} plan: "
                                       f"{ranking['errors'][chosen]:.3g} compensated, "
                                       f"{ranking['plain_errors'][chosen]:.3g} without): written without it"]
    expected = {t.name: [d if isinstance(d, int) and d > 0 else None for d in (t.shape or [])]
                for t in compiled.graph.outputs}
    staging = staged_output(output) if output is not None else nullcontext()
    with staging as stage:  # a written model is renamed into place only if verified, with the report
        while True:
            if compensating:
                say("compensating consumer weights and folding into BatchNorm")
            updates = updates_for(plan)
            if context is not None and search is None and speed is None:  # no other plan follows: free the memory
                compensated.clear()
                context.release()
            say(f"rewriting {len(plan.removed)} groups")
            graph, log = rewrite(compiled.graph, compiled.meta, compiled.analysis, plan, updates)
            guard_written_weights(graph, nonfinite)
            release_pages()
            pruned = None
            if opts.recalibrate_bn:
                from .obspa.recalibrate import recalibrate_batchnorm

                say("recalibrating BatchNorm statistics on the calibration inputs")
                pruned = recalibrate_batchnorm(to_model(graph, compiled.meta), calib_data)
                guard_written_model(pruned, nonfinite)
            t2 = time.perf_counter()
            report = build_report(compiled, graph, plan, log, criterion, options, target_macs)
            if stage is not None:
                external = (input_path is not None and uses_external_data(input_path)) or \
                    total_constant_bytes(graph) > EXTERNAL_DATA_THRESHOLD
                say(f"writing {output}" + (" (weights streamed to external data)" if external else ""))
                if pruned is None:
                    pruned = write_graph(graph, compiled.meta, stage, external)
                else:
                    write_proto(pruned, stage, external)
                target = stage.model_path
            else:
                pruned = pruned if pruned is not None else to_model(graph, compiled.meta)
                target = pruned
            del graph  # written or in the protobuf: its arrays can go before onnxruntime loads the model
            if verify:
                say("verifying with onnxruntime")
            verification = _verify(target, compiled, expected) if verify else check_checker(target)
            fid = fidelity.measure(target, measurement) if measurement is not None else None
            smaller = search.back_off(fidelity.relative_error(fid)) if search is not None else None
            if smaller is None and speed is not None:
                smaller = speed.after(target, plan)
            if smaller is None:
                break
            if search is None:
                plan = smaller
                continue
            say(f"measured {fidelity.relative_error(fid):.4f} > --max-error {max_error}: backing off")
            plan = smaller
        collapse = fidelity.collapse_warning(fid) if fid is not None else None
        report.update(verify=verification, hessian=hessian_info, compensated=bool(compensating), fidelity=fid, ranking=ranking,
                      warnings=finite_warnings + warnings + (context.warnings() if context is not None else [])
                      + ([collapse] if collapse else []),
                      inputs=compiled.dense.describe() if compiled.dense else {"input_shapes": compiled.spec.describe()})
        if search is not None:
            report["max_error"] = search.report(fidelity.relative_error(fid))
        if speed is not None:
            report["speed"], speed_warnings = speed.report()
            report["warnings"] += speed_warnings
        report["seconds"] = {"analyze": round(t1 - t0, 3), "prune": round(t2 - t1, 3),
                             "total": round(time.perf_counter() - t0, 3)}
        if stage is not None:
            report["output"] = str(output)
            if report_path is not None:
                stage.add_file(report_path, _report_bytes(report, report_path))
    if output is None and report_path is not None:
        with staged_output(report_path) as stage:
            stage.model_path.write_bytes(_report_bytes(report, report_path))
    return PruneResult(pruned, plan, report, compiled, scores)


def _within_max_error(search: MaxErrorSearch, target_macs: Optional[float], say) -> Plan:
    """The MACs target's own plan when it measures within the limit, else the sensitivity search's plan."""
    if target_macs is not None:
        plan = plan_pruning(search.compiled, search.scores, search.options, target_macs)
        if search.error(plan) <= search.limit:
            return plan
    say(f"searching the largest pruning within relative error {search.limit}")
    return search.search()


def _verify(pruned, compiled: Compiled, expected: dict) -> dict:
    """Against the dense model's run at the input spec when there was one, else the declared output shapes."""
    dense = compiled.dense
    if dense is not None and dense.outputs:
        return verify_like_dense(pruned, dense, expected)
    return check_pruned(pruned, expected)


def _report_bytes(report: dict, path) -> bytes:
    try:
        return to_json(report).encode()
    except (OSError, ValueError, TypeError) as exc:
        raise UsageError(f"{path}: cannot write the report ({exc})") from None


def _statistics(compiled: Compiled, hessian, calib_data, samples: int, seed: int, damping: float, noise: str, say):
    """Consumer-layer statistics for OBSPA-like criteria: (ObsContext, report entry, warnings)."""
    source, why = choose_hessian_source(compiled, hessian, calib_data)
    say(f"collecting layer statistics ({source}: {why})")
    try:
        stats = statistics.collect(compiled, consumer_nodes(compiled), source, calib_data, samples=samples,
                                   seed=seed, noise=noise, progress=say)
    except Exception as exc:  # noqa: BLE001 - onnxruntime refusing the input model is bad input
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        text = str(exc).strip().splitlines()
        raise ModelLoadError(f"{compiled.source}: the model does not run in onnxruntime (statistics run, "
                             f"{source}): {text[0][:200] if text else type(exc).__name__}") from None
    warning = bn_free_conv_warning(compiled) if source != "calib" else None
    info = {"source": source, "why": why, "layers": len(stats), "samples": samples, "noise": noise}
    return ObsContext(compiled.graph, compiled.analysis, stats, damping), info, [warning] if warning else []


def build_report(compiled: Compiled, pruned_graph, plan: Plan, log, criterion: str, options: PlanOptions,
                 target_macs: Optional[float]) -> dict:
    params0, macs0 = totals(compiled.graph, concrete_shapes(compiled.graph, compiled.spec))
    params1, macs1 = totals(pruned_graph, concrete_shapes(pruned_graph, compiled.spec))
    analysis = compiled.analysis
    groups = []
    for gid, removed in sorted(plan.removed.items()):
        group = analysis.groups[gid]
        producers = sorted({p.node for p in group.params_by_role(PRODUCER)})
        groups.append({"group": gid, "layers": producers, "atoms": group.n_atoms,
                       "atoms_removed": int(len(removed)), "exact": group.exact})
    return {
        "source": compiled.source,
        "criterion": criterion,
        "ratio": options.ratio,
        "global": options.global_ranking,
        "round_to": options.round_to,
        "snap": {"multiple": options.snap, "min_channels": SNAP_MIN_CHANNELS, "wide_multiple": 2 * options.snap,
                 "wide_channels": SNAP_WIDE_CHANNELS} if options.snap > 1 else None,
        "target_macs": target_macs,
        "params": {"before": params0, "after": params1},
        "macs": {"before": macs0, "after": macs1},
        "groups": {"total": len(analysis.groups), "prunable": len(analysis.prunable_groups),
                   "pruned": len(plan.removed), "frozen": sum(1 for g in analysis.groups if g.frozen),
                   "skipped": {str(k): v for k, v in plan.skipped.items()}},
        "removed": groups,
        "initializers": {k: {"before": v[0], "after": v[1]} for k, v in log.initializers.items()},
        "edits": log.edits,
        "normalize": compiled.notes,
    }
