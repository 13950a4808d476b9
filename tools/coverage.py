"""Coverage: does every zoo model prune, verify and pass the oracle?  One row per model, never a crash.

    pip install -e ".[zoo-torch]" timm transformers onnxsim
    python tools/coverage.py [--framework timm] [--only resnet18 bert] [-o tools/coverage_results]

Each framework is built in its own environment (TensorFlow, JAX, Paddle and
torch do not share one well): run ``--framework keras`` from the Keras venv,
``--framework jax`` from the JAX venv, and so on.  Rows are merged into the
existing table by (model, framework), so one framework's run never drops
another's rows; ``--fresh`` starts an empty table.

For each model of models/zoo.py (exported once, cached): op types, groups found,
frozen groups and why, ``spa_compiler.prune(ratio=0.5)`` with the default
criterion (checker + onnxruntime run), params/MACs ratios, the mask oracle's
maximum relative error on exact groups, and, side by side, onnxsim's
``pruning.apply_structured_pruning`` at the same sparsity.  Each model runs
in its own process with a time limit; the tables go to ``<out>.md`` and
``<out>.json`` (by default the committed ``tools/coverage_results.*``).
"""
from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORKER = r'''
import json, sys, time, collections
sys.path.insert(0, {root!r})
row = {{"model": {name!r}, "framework": {framework!r}}}
try:
    from models.zoo import zoo
    entry = next(z for z in zoo() if z.name == {name!r} and z.framework == {framework!r})
    t0 = time.time()
    path = str(entry.ensure())
    row["export_s"] = round(time.time() - t0, 1)
    import onnx
    row["ops"] = len({{n.op_type for n in onnx.load(path, load_external_data=False).graph.node}})
    from spa_compiler.pipeline import compile_model
    from spa_compiler.oracle import oracle_check
    import spa_compiler
    compiled = compile_model(path)
    groups = compiled.analysis.groups
    row["groups"] = len(groups)
    row["prunable"] = len(compiled.analysis.prunable_groups)
    reasons = collections.Counter(g.frozen[0] for g in groups if g.frozen and not g.frozen[0].startswith("reaches graph output"))
    row["frozen"] = sum(1 for g in groups if g.frozen)
    row["frozen_why"] = "; ".join(f"{{n}}x {{r[:90]}}" for r, n in reasons.most_common(3))
    t0 = time.time()
    result = spa_compiler.prune(path, ratio=0.5)
    row["prune_s"] = round(time.time() - t0, 1)
    rep = result.report
    row["macs_ratio"] = round(rep["macs"]["after"] / max(rep["macs"]["before"], 1), 3)
    row["params_ratio"] = round(rep["params"]["after"] / max(rep["params"]["before"], 1), 3)
    exact = [g for g in compiled.analysis.prunable_groups if g.exact]
    if exact:
        oracle = oracle_check(compiled, 0.5)
        row["oracle_rel_err"] = float("%.2g" % oracle.relative_error)
        row["status"] = "ok" if oracle.relative_error < 1e-3 else "oracle mismatch"
    else:
        row["status"] = "ok (no exact group)"
except Exception as exc:
    msg = str(exc).replace({root!r} + "/", "").strip().splitlines()  # paths relative to the checkout
    kind = "frozen" if type(exc).__name__ == "NothingToPruneError" else "error: " + type(exc).__name__
    row["status"] = kind + ": " + (msg[0][:200] if msg else "")
try:
    from onnxsim import pruning
    from spa_compiler.cost import totals
    from spa_compiler.normalize import normalize
    dense = totals(normalize(onnx.load(path)).graph)
    peer = totals(normalize(pruning.apply_structured_pruning(path, sparsity=0.5)).graph)
    row["onnxsim_macs_ratio"] = round(peer[1] / max(dense[1], 1), 3)
except Exception as exc:
    row["onnxsim_macs_ratio"] = "error: " + type(exc).__name__
print("@@ROW@@" + json.dumps(row))
'''

COLUMNS = ["model", "framework", "ops", "groups", "prunable", "frozen", "macs_ratio", "params_ratio",
           "oracle_rel_err", "onnxsim_macs_ratio", "status", "frozen_why"]


def run_one(name: str, framework: str, timeout: int) -> dict:
    code = WORKER.format(root=str(ROOT), name=name, framework=framework)
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"model": name, "framework": framework, "status": f"error: timeout after {timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("@@ROW@@"):
            return json.loads(line[len("@@ROW@@"):])
    lines = [line for line in proc.stderr.strip().splitlines() if "warn" not in line.lower()] or ["no output"]
    how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    return {"model": name, "framework": framework, "status": f"error: worker died, {how} ({lines[-1][:200]})"}


def main() -> None:
    from models.zoo import zoo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", nargs="*")
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("-o", "--out", default=str(ROOT / "tools" / "coverage_results"))
    parser.add_argument("--fresh", action="store_true", help="start an empty table instead of merging rows")
    args = parser.parse_args()
    entries = [z for z in zoo() if (not args.framework or z.framework in args.framework)
               and (not args.only or z.name in args.only)]
    missing = sorted({z.framework for z in entries if not z.available()})
    if missing:
        print(f"skipped (framework not importable here): {', '.join(missing)}", flush=True)
    entries = [z for z in entries if z.available()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fresh = args.fresh
    rows: list[dict] = []
    for entry in entries:
        start = time.time()
        row = run_one(entry.name, entry.framework, args.timeout)
        row["seconds"] = round(time.time() - start, 1)
        print(f"{entry.framework:>12} {entry.name:<34} {row['status'][:100]}", flush=True)
        rows = merged(out, row, fresh)
        fresh = False
        write_tables(rows, out)  # after every model: an interrupted run still leaves its table
    if not rows:
        raise SystemExit("no zoo model to run here (is the framework installed in this environment?)")
    print(write_tables(rows, out))


def merged(out: Path, row: dict, fresh: bool) -> list[dict]:
    """The table on disk with *row* put in place of its (model, framework) row.

    Read again before every write, so runs of different frameworks from their
    own venvs can go on at the same time without dropping each other's rows.
    """
    table = out.with_suffix(".json")
    rows = json.loads(table.read_text()) if table.exists() and not fresh else []
    return [r for r in rows if (r["model"], r["framework"]) != (row["model"], row["framework"])] + [row]


def write_tables(rows: list[dict], out: Path) -> str:
    from tools.common import markdown_table

    rows.sort(key=lambda r: (r["framework"], r["model"]))
    summary = collections.defaultdict(lambda: [0, 0])
    for row in rows:
        for key in (row["framework"], "all"):
            summary[key][1] += 1
            summary[key][0] += row["status"].startswith("ok")
    text = "| framework | pruned and verified / tried |\n|---|---|\n" + "\n".join(
        f"| {fw} | {ok} / {n} |" for fw, (ok, n) in sorted(summary.items(), key=lambda kv: (kv[0] == "all", kv[0])))
    text += "\n\n" + markdown_table(rows, COLUMNS)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    return text


if __name__ == "__main__":
    main()
