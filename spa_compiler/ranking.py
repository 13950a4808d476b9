"""How channels are allocated across layers when the user chose no ranking: the plan that measures best.

A criterion that prefers global ranking (OBSPA's energy-normalized costs) is right on some models and badly
wrong on others: real BN-free taggers kept 0.2-0.8 of their task globally and 0.92-0.98 with the same ratio
in every group (docs/realmodels.md), and no op-mix rule separates them.  Neither per-layer rule knows how far
the *outputs* move, so a third candidate allocates by measured end-to-end sensitivity (issue 12, item 3):
every group is probed alone at a few ratios and the MACs are taken from the groups whose removal moves the
outputs least per MACs saved (:meth:`budget.MaxErrorSearch.meet_target`), with the criterion still choosing
which channels inside a group go.  Probes measure plain removal, not OBSPA's compensation: its solves cost a
hundred masked runs (deepcut: 57 of 70 s) and on attacut-c both probe kinds allocate the same plan; the
candidate plans themselves are measured compensated.

All candidates are measured on the measurement inputs in one masked run each; the global plan stays unless
another one is clearly better (``ERROR_MARGIN``) with no more MACs kept than the global plan or, where the
global plan landed under the MACs target, than the target (plans compare at the budget the user asked for:
digits ViT at r = 0.3 then takes the sensitivity plan, test accuracy 0.950 -> 0.965).  When the criterion compensates,
every candidate is also measured with plain removal, and a plain plan clearly better than the chosen
compensated one is written without compensation: the per-consumer guard (compensation never worse than
removal on that consumer's statistics) cannot see errors that compound across layers, and on a small
random-weight ResNet at MACs x0.7 compensation doubled the output error of every plan.
"""
from __future__ import annotations

from typing import Callable, Optional

from .budget import TARGET_PROBE_RATIOS, MaxErrorSearch
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
STOP_CAP = 1.0  # no group is probed past a relative output error of 1 (its outputs are gone)


def measured_ranking(compiled: Compiled, scores, opts: PruneOptions, global_plan: Plan, measurement,
                     updates_for: Callable[[Plan], Optional[dict]], say,
                     progress: Optional[Callable[[str], None]] = None,
                     compensating: bool = False) -> tuple[Plan, PlanOptions, dict]:
    """The global, per-group or sensitivity-allocated plan, whichever measures the lowest output error.

    Returns the plan, the planner options it was made with, and the report entry ``ranking``, whose
    ``compensated`` says whether the plan is to be written compensated (see the module docstring).
    """
    global_options = opts.plan_options()
    local_options = opts.plan_options(global_ranking=False)
    say("measuring global, per-group and sensitivity-allocated plans on the measurement inputs")
    judge = MaxErrorSearch(compiled, scores, local_options, measurement, float("inf"), opts.target_macs,
                           updates_for, progress, probe_ratios=TARGET_PROBE_RATIOS, compensate_probes=False)
    plans = {"global": global_plan}
    local_plan = plan_pruning(compiled, scores, local_options, opts.target_macs)
    if local_plan.removed:
        plans["local"] = local_plan
    errors = {"global": judge.error(global_plan)}
    macs = {"global": judge.macs_fraction(global_plan)}
    sensitivity = _sensitivity_plan(judge, opts.target_macs or macs["global"])
    if sensitivity is not None:
        plans["sensitivity"] = sensitivity
    for name, plan in plans.items():
        if name not in errors:
            errors[name], macs[name] = judge.error(plan), judge.macs_fraction(plan)
    chosen = clearly_better(errors, macs, errors["global"], macs["global"], opts.target_macs) or "global"
    info = {"chosen": chosen, "errors": errors, "macs": macs, "compensated": compensating}
    if compensating:
        plain = {name: judge.error(plan, plain=True) for name, plan in plans.items()}
        clearer = clearly_better(plain, macs, errors[chosen], macs[chosen], opts.target_macs)
        if clearer:
            chosen = clearer
            info.update(chosen=chosen, compensated=False)
        info["plain_errors"] = plain
    info.update(groups_probed=len(judge.probes), evaluations=judge.evaluations)
    return plans[chosen], (global_options if chosen == "global" else local_options), info


def clearly_better(errors: dict[str, float], macs: dict[str, float], error: float, kept: float,
                   target: Optional[float]) -> Optional[str]:
    """The candidate of lowest error below ``ERROR_MARGIN`` x *error* (the current plan's, keeping *kept*
    MACs), keeping no more MACs than it or than the *target* where it landed under the target (plans
    compare at the budget asked for: the global plan can overshoot it, digits ViT at r = 0.3 reached MACs
    0.672 for a target of 0.732); None when none is."""
    ceiling = max(kept, target or 0.0) + MACS_SLACK
    better = [name for name in errors if errors[name] < ERROR_MARGIN * error and macs[name] <= ceiling]
    return min(better, key=errors.__getitem__) if better else None


def _sensitivity_plan(judge: MaxErrorSearch, target_macs: float) -> Optional[Plan]:
    """The sensitivity allocation at *target_macs*, no group probed past an output error of ``STOP_CAP``.

    The probes measure plain removal, which moves the outputs more than the compensated plans measured
    against it, so they are not stopped at the global plan's error (on attacut-c that left no way to reach
    the target); None when they cannot reach it.
    """
    judge.limit, judge.target_macs = STOP_CAP, target_macs
    return judge.meet_target()
