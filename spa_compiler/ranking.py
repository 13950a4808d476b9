"""How channels are allocated across layers when the user chose no ranking: the plan that measures best.

A criterion that prefers global ranking (OBSPA's energy-normalized costs) is right on some models and badly
wrong on others: real BN-free taggers kept 0.2-0.8 of their task globally and 0.92-0.98 with the same ratio
in every group (docs/realmodels.md), and no op-mix rule separates them.  Neither per-layer rule knows how far
the *outputs* move, so a third candidate allocates by measured end-to-end sensitivity (issue 12, item 3):
every group is probed alone at a few ratios and the MACs are taken from the groups whose removal moves the
outputs least per MACs saved (:meth:`budget.MaxErrorSearch.meet_target`), with the criterion still choosing
which channels inside a group go.  Probes measure plain removal, not OBSPA's compensation: its solves cost a
hundred masked runs (deepcut: 57 of 70 s) and on attacut-c both probe kinds allocate the same plan; the
candidate plans themselves are measured compensated.  Groups that a recurrent layer OBSPA compensates reads
are the exception: a recurrence carries a removal's error through every later step, and their probes are
compensated (:mod:`obspa.recurrence`).

Every criterion goes through it (issue 13, ``--ratio 0.1`` on the dev set): the criterion's own plan (the
same ratio in every group for l2, global for OBSPA) sets the MACs, and the sensitivity plan at those MACs
replaces it when it measures clearly better.  A plan whose outputs collapsed (no correlation left, see
:func:`collapsed`) never wins: the same 10 % of every group sent oskut-ws-augment-60p's output to zero, which
measures a relative error of exactly 1.0, lower than the noisy but faithful sensitivity plan's 1.2.

All candidates are measured on the measurement inputs in one masked run each; the default plan stays unless
another one is clearly better (``ERROR_MARGIN``) with no more MACs kept than the default plan or, where the
global plan landed under the MACs target, than the target (plans compare at the budget the user asked for:
digits ViT at r = 0.3 then takes the sensitivity plan, test accuracy 0.950 -> 0.965).  When the criterion compensates,
every candidate is also measured with plain removal, and a plain plan clearly better than the chosen
compensated one is written without compensation: the per-consumer guard (compensation never worse than
removal on that consumer's statistics) cannot see errors that compound across layers, and on a small
random-weight ResNet at MACs x0.7 compensation doubled the output error of every plan.
"""
from __future__ import annotations

from typing import Callable, Optional

from .budget import TARGET_PROBE_RATIOS, MaxErrorSearch, batch_samples
from .fidelity import relative_error
from .obspa.recurrence import compensated_recurrent_groups
from .options import PruneOptions
from .pipeline import Compiled, plan_pruning
from .plan import Plan, PlanOptions

# Another plan replaces the global one only when it is clearly better: below this fraction of the global
# plan's measured error (data-free errors from 16 samples are a noisy proxy: on the digits CNN at MACs x0.5
# they favoured per-group 0.282 vs 0.309 (0.91x) where test accuracy favours global 0.898 vs 0.856; attacut-c at
# MACs x0.75 measured sensitivity 0.196 vs global 0.233 (0.84x) and keeps 0.967 vs 0.940 of its word
# boundaries), and no more MACs kept (estimates differ slightly between plans).
ERROR_MARGIN = 0.9
MACS_SLACK = 0.005
CANDIDATES = 3  # global, per-group and sensitivity-allocated plans
COLLAPSED_COSINE = 0.0  # see collapsed()
# A per-group plan that already measures within what ``--max-error 0.05`` accepts is written without the
# sensitivity search: its probes cost up to 8 masked runs per group (open-nsfw, a thin ResNet-50 at 224x224:
# 30 s -> 1415 s on the loaded 2-core machine, for a plan that measured 0.03 and kept the task anyway).
GOOD_ENOUGH = 0.05
STOP_CAP = 1.0  # no group is probed past a relative output error of 1 (its outputs are gone)
# The sensitivity search runs each group alone at up to len(TARGET_PROBE_RATIOS) ratios on PROBE_SAMPLES
# samples (more where a sample has few output values, budget.PROBE_VALUES).  Its work grows as dense MACs x
# groups, so on a large CNN it turns a default prune of seconds into many minutes (a ResNet-50 at 224x224,
# 37 groups: about 1e13 MACs of probes; the default l2 run went from seconds to over 10 minutes on the loaded
# 2-core machine).  Above this many MACs of probe work the default
# compares only the criterion's own plans (global and per group) and says so in the report; the real taggers,
# diacritizers and speaker embedder of the dev set, where the search matters, need 2e8-3e11.
PROBE_MACS_BUDGET = 1e12


def measured_ranking(compiled: Compiled, scores, opts: PruneOptions, default_plan: Plan, measurement,
                     updates_for: Callable[[Plan], Optional[dict]], say,
                     progress: Optional[Callable[[str], None]] = None,
                     compensating: bool = False) -> tuple[Plan, PlanOptions, dict]:
    """The criterion's default plan or another allocation, whichever measures the lowest output error.

    *default_plan* is the criterion's own (global for a criterion that prefers it, else the same ratio in
    every group); the candidates against it are the per-group plan (for a global default) and the
    sensitivity-allocated plan at the same MACs.  Returns the plan, the planner options it was made with,
    and the report entry ``ranking``, whose ``compensated`` says whether the plan is to be written
    compensated (see the module docstring).
    """
    default_options = opts.plan_options()
    local_options = opts.plan_options(global_ranking=False)
    default = "global" if default_options.global_ranking else "local"
    say(f"measuring {'global, per-group' if default == 'global' else 'per-group'} and sensitivity-allocated "
        f"plans on the measurement inputs")
    recurrent = compensated_recurrent_groups(compiled.graph, compiled.analysis) if compensating else frozenset()
    judge = MaxErrorSearch(compiled, scores, local_options, measurement, float("inf"), opts.target_macs,
                           updates_for, progress, probe_ratios=TARGET_PROBE_RATIOS, compensate_probes=False,
                           compensated_groups=recurrent)
    plans = {default: default_plan}
    if default == "global":
        local_plan = plan_pruning(compiled, scores, local_options, opts.target_macs)
        if local_plan.removed:
            plans["local"] = local_plan
    measured = {default: judge.fidelity(default_plan)}
    macs = {default: judge.macs_fraction(default_plan)}
    work = probe_macs(judge)
    if default == "local" and not compensating and ranked_error(measured[default]) <= GOOD_ENOUGH:
        sensitivity, searched = None, "skipped: the per-group plan is within 0.05"  # nothing to win
    elif work > PROBE_MACS_BUDGET:
        sensitivity, searched = None, (f"skipped: its probes would cost {work:.2g} MACs (> {PROBE_MACS_BUDGET:.0e}); "
                                       "--max-error F runs it")
        say(f"sensitivity-allocated plan {searched}")
    else:
        sensitivity, searched = _sensitivity_plan(judge, opts.target_macs or macs[default]), "measured"
    if sensitivity is not None:
        plans["sensitivity"] = sensitivity
    for name, plan in plans.items():
        if name not in measured:
            measured[name], macs[name] = judge.fidelity(plan), judge.macs_fraction(plan)
    errors = {name: relative_error(f) for name, f in measured.items()}
    ranked = {name: ranked_error(f) for name, f in measured.items()}
    chosen = clearly_better(ranked, macs, ranked[default], macs[default], opts.target_macs) or default
    info = {"chosen": chosen, "errors": errors, "macs": macs, "compensated": compensating, "sensitivity": searched,
            "collapsed": sorted(name for name, f in measured.items() if collapsed(f))}
    if compensating:
        plain_measured = {name: judge.fidelity(plan, plain=True) for name, plan in plans.items()}
        plain = {name: ranked_error(f) for name, f in plain_measured.items()}
        clearer = clearly_better(plain, macs, ranked[chosen], macs[chosen], opts.target_macs)
        if clearer:
            chosen = clearer
            info.update(chosen=chosen, compensated=False)
        info["plain_errors"] = {name: relative_error(f) for name, f in plain_measured.items()}
    info.update(groups_probed=len(judge.probes), evaluations=judge.evaluations)
    return plans[chosen], (default_options if chosen == "global" else local_options), info


def probe_macs(judge: MaxErrorSearch) -> float:
    """An upper bound on the MACs the sensitivity probes run: every group at every probe ratio, whole model."""
    samples = judge.probe_batches * batch_samples(judge.measurement.inputs.batches)
    return float(judge.dense_macs) * samples * len(judge.groups) * len(TARGET_PROBE_RATIOS)


def collapsed(fidelity: dict) -> bool:
    """Outputs with no correlation left to the dense ones (all zero, or anti-correlated): worse than any
    plan that keeps some, whatever the relative errors say (an output gone to zero measures exactly 1.0, a
    noisy but faithful one can measure more; oskut-ws-augment-60p at ``--ratio 0.1``: 1.0 for the
    collapsed per-group plan, 1.20 at cosine 0.70 for the sensitivity plan that keeps the task)."""
    return not fidelity["finite"] or fidelity["cosine"] <= COLLAPSED_COSINE


def ranked_error(fidelity: dict) -> float:
    """The error plans are compared by: the relative error, infinite for a collapsed plan."""
    return float("inf") if collapsed(fidelity) else relative_error(fidelity)


def clearly_better(errors: dict[str, float], macs: dict[str, float], error: float, kept: float,
                   target: Optional[float], margin: float = ERROR_MARGIN) -> Optional[str]:
    """The candidate of lowest error below ``ERROR_MARGIN`` x *error* (the current plan's, keeping *kept*
    MACs), keeping no more MACs than it or than the *target* where it landed under the target (plans
    compare at the budget asked for: the global plan can overshoot it, digits ViT at r = 0.3 reached MACs
    0.672 for a target of 0.732); None when none is.  *margin* replaces ``ERROR_MARGIN`` (1: any lower error)."""
    ceiling = max(kept, target or 0.0) + MACS_SLACK
    better = [name for name in errors if errors[name] < margin * error and macs[name] <= ceiling]
    return min(better, key=errors.__getitem__) if better else None


def _sensitivity_plan(judge: MaxErrorSearch, target_macs: float) -> Optional[Plan]:
    """The sensitivity allocation at *target_macs*, no group probed past an output error of ``STOP_CAP``.

    The probes measure plain removal, which moves the outputs more than the compensated plans measured
    against it, so they are not stopped at the global plan's error (on attacut-c that left no way to reach
    the target); None when they cannot reach it.
    """
    judge.limit, judge.target_macs = STOP_CAP, target_macs
    return judge.meet_target()
