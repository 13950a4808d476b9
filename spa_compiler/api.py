"""The Python API: ``prune()`` as an export-time pass, returning the model and a report."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import onnx

from .analysis import PRODUCER
from .obspa import statistics
from .obspa.compensate import ObsContext, compensate as compensation
from .cost import totals
from .errors import ModelLoadError, UsageError
from .finite import check_input_weights, guard_written_model, guard_written_weights
from .ir import to_model
from .jsonout import to_json
from .modelio import (EXTERNAL_DATA_THRESHOLD, ModelLike, check_input_file, check_output_path, check_written_files,
                      staged_output, uses_external_data, write_graph, write_proto)
from .pipeline import (Compiled, bn_free_conv_warning, choose_hessian_source, compile_model,
                       consumer_nodes, load_calib, plan_pruning, require_prunable, score_groups)
from .options import PruneOptions
from .plan import Plan, PlanOptions
from .rewrite import rewrite
from .runtime import check_checker, check_pruned
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
          round_to: int = 1, exclude: Sequence[str] = (), target_macs: Optional[float] = None,
          max_group_ratio: float = 0.9, reduce: str = "sum", seed: int = 0, verify: bool = True,
          prune_hidden: bool = False, prune_head_dims: bool = False, hessian: Optional[str] = None, calib=None, samples: int = 256,
          damping: float = 0.01, compensate: Optional[bool] = None, recalibrate_bn: bool = False, noise: str = "auto",
          output: Optional[str] = None, force: bool = False, report_path: Optional[str] = None,
          progress: Optional[Callable[[str], None]] = None) -> PruneResult:
    """Prune whole channels of *model* (a path or an ``onnx.ModelProto``).

    ratio: fraction of each group's channels removed (or of all channels with
    ``global_ranking``; None lets the criterion choose: global for obspa, whose
    energy-normalized costs compare across layers, local otherwise); target_macs: instead of a ratio, prune until the MACs
    are at most this fraction of the original; prune_hidden: also prune a
    transformer's residual-stream width (inexact through LayerNorm, opt-in).  With *output*, the model is
    written atomically after verification, together with the JSON report at *report_path*
    (both or neither).  Raises :class:`SpacError`
    subclasses with one-line messages.
    """
    options = PruneOptions(ratio=ratio, criterion=criterion, global_ranking=global_ranking, round_to=round_to,
                           exclude=exclude, target_macs=target_macs, max_group_ratio=max_group_ratio, reduce=reduce,
                           seed=seed, verify=verify, prune_hidden=prune_hidden, prune_head_dims=prune_head_dims,
                           hessian=hessian, calib=calib, samples=samples, damping=damping, compensate=compensate,
                           recalibrate_bn=recalibrate_bn, noise=noise, output=output, force=force,
                           report_path=report_path)
    return prune_with(model, options, progress)


def prune_with(model: ModelLike, opts: PruneOptions, progress: Optional[Callable[[str], None]] = None) -> PruneResult:
    """:func:`prune` with its options already built (and so validated): what the CLI calls."""
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
    compiled = compile_model(model, prune_hidden=opts.prune_hidden, head_dims=opts.prune_head_dims)
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
    plan = plan_pruning(compiled, scores, options, target_macs)
    if not plan.removed and ratio > 0 and target_macs is None:
        raise UsageError(f"{compiled.source}: ratio {ratio} removes no channel (groups too small or excluded)")
    updates = None
    if compensating:
        say("compensating consumer weights and folding into BatchNorm")
        context = obs or ObsContext(compiled.graph, compiled.analysis, {}, opts.damping)
        updates = compensation(context, plan)
        warnings = warnings + context.warnings()
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
    expected = {t.name: [d if isinstance(d, int) else None for d in (t.shape or [])] for t in compiled.graph.outputs}
    report.update(verify=None, hessian=hessian_info, compensated=bool(compensating),
                  warnings=finite_warnings + warnings)

    def finish(verification) -> None:
        report["verify"] = verification
        report["seconds"] = {"analyze": round(t1 - t0, 3), "prune": round(t2 - t1, 3),
                             "total": round(time.perf_counter() - t0, 3)}

    if output is not None:
        external = (input_path is not None and uses_external_data(input_path)) or \
            total_constant_bytes(graph) > EXTERNAL_DATA_THRESHOLD
        with staged_output(output) as stage:  # renamed into place only if verified, with the report
            say(f"writing {output}" + (" (weights streamed to external data)" if external else ""))
            if pruned is None:
                pruned = write_graph(graph, compiled.meta, stage, external)
            else:
                write_proto(pruned, stage, external)
            del graph  # written: its arrays can go before onnxruntime loads the file
            if verify:
                say("verifying with onnxruntime")
            finish(check_pruned(stage.model_path, expected) if verify else check_checker(stage.model_path))
            report["output"] = str(output)
            if report_path is not None:
                stage.add_file(report_path, _report_bytes(report, report_path))
    else:
        pruned = pruned if pruned is not None else to_model(graph, compiled.meta)
        del graph  # the protobuf holds the pruned weights from here on
        if verify:
            say("verifying with onnxruntime")
        finish(check_pruned(pruned, expected) if verify else check_checker(pruned))
        if report_path is not None:
            with staged_output(report_path) as stage:
                stage.model_path.write_bytes(_report_bytes(report, report_path))
    return PruneResult(pruned, plan, report, compiled, scores)


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
    params0, macs0 = totals(compiled.graph)
    params1, macs1 = totals(pruned_graph)
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
