"""Where an int8 LSTM tagger loses its task at a MACs target: every split of the budget between groups.

    SPAC_REALMODELS_DIR=/work/realmodels python tools/lstm_allocation.py rawi.int8 --vary 3 0 \\
        --counts 0,4,8,16 48,64,76,90 --fill 2 [--target 0.75] [--seed 0]

OBSPA chooses the units of every group (its scores) and compensates them; the first ``--vary`` group takes
each of the first ``--counts`` list's removal counts, the second each of the second's, and the ``--fill``
group as many units as the MACs target needs.  Each row: the task agreement on the case's evaluation
inputs (docs/realmodels.md) and the relative output error on the data-free measurement inputs, with and
without compensation.  It is what showed that rawi at MACs x0.75 loses its diacritics by the allocation
(7 units of its first LSTM), not by the choice of units (docs/realmodels.md, "Recurrent groups probed
compensated").
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.realmodels import all_cases, ensure_models, run_all, task_agreement


def main(argv=None) -> int:
    import onnxruntime as ort

    from spa_compiler import fidelity
    from spa_compiler.api import _statistics
    from spa_compiler.budget import MaxErrorSearch
    from spa_compiler.obspa.compensate import compensate
    from spa_compiler.pipeline import apply_plan, compile_model, score_groups
    from spa_compiler.plan import Plan, PlanOptions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--vary", nargs=2, type=int, required=True, help="two group ids")
    parser.add_argument("--counts", nargs=2, required=True, help="comma-separated removal counts of each")
    parser.add_argument("--fill", type=int, required=True, help="the group that meets the MACs target")
    parser.add_argument("--target", type=float, default=0.75)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args(argv)
    root, why = ensure_models()
    if root is None:
        print(f"lstm_allocation: {why}", file=sys.stderr)
        return 2
    case = next(c for c in all_cases() if c.name == args.model)
    path = str(root / case.file)
    prepared = case.prepare(root)
    dense = run_all(ort.InferenceSession(path, providers=["CPUExecutionProvider"]), prepared.eval_feeds)
    compiled = compile_model(path, run_dense=True, measure=(args.seed, "auto"))
    obs, _, _ = _statistics(compiled, None, None, args.samples, args.seed, 0.01, "auto", lambda _m: None)
    scores = score_groups(compiled, "obspa", seed=args.seed, obs=obs)
    measurement, _ = fidelity.try_measure_dense(path, None, args.seed, "auto", required=True, spec=compiled.spec,
                                                dense=compiled.dense)
    judge = MaxErrorSearch(compiled, scores, PlanOptions(), measurement, float("inf"), args.target,
                           lambda plan: compensate(obs, plan))

    def plan_of(counts: dict[int, int]) -> Plan:
        return Plan({g: np.sort(np.argsort(scores[g], kind="stable")[:n]) for g, n in counts.items() if n})

    def task(plan: Plan) -> float:
        model, _, _ = apply_plan(compiled, plan, compensate(obs, plan))
        with tempfile.TemporaryDirectory() as tmp:
            written = Path(tmp) / "pruned.onnx"
            written.write_bytes(model.SerializeToString())
            pruned = run_all(ort.InferenceSession(str(written), providers=["CPUExecutionProvider"]),
                             prepared.eval_feeds)
        return task_agreement(prepared, dense, pruned)

    (ga, gb), fill = args.vary, args.fill
    cap = int(0.9 * compiled.analysis.groups[fill].n_atoms)
    print(f"| group {ga} | group {gb} | group {fill} | MACs | task | error | plain error |\n|---|---|---|---|---|---|---|")
    for a, b in itertools.product(*([int(n) for n in counts.split(",")] for counts in args.counts)):
        def at(n: int) -> Plan:
            return plan_of({ga: a, gb: b, fill: n})

        if judge.macs_fraction(at(cap)) > args.target:
            print(f"| {a} | {b} | > {cap} | cannot reach {args.target} | | | |")
            continue
        low, high = -1, cap  # the fewest fill units that meet the target
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (low, mid) if judge.macs_fraction(at(mid)) <= args.target else (mid, high)
        plan = at(high)
        print(f"| {a} | {b} | {high} | {judge.macs_fraction(plan):.3f} | {task(plan):.3f} | {judge.error(plan):.4f} "
              f"| {judge.error(plan, plain=True):.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
