"""``--max-error`` on a folder of models: how far the MACs fall, at what measured error, in how much time.

Usage: python tools/max_error_bench.py DIR [--max-error 0.05] [--criteria l2,obspa] [--json OUT]

Every (model, criterion) runs in a fresh process (tools/common.measure): wall seconds and peak RSS belong
to that run.  A model the compiler refuses (no prunable group, ...) is listed with its one-line error.
The error column is re-measured here from the written model, not copied from the report.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tools.common import markdown_table, measure  # noqa: E402

RUN = r'''
import spa_compiler
from spa_compiler import fidelity
from spa_compiler.errors import SpacError
try:
    r = spa_compiler.prune({model!r}, criterion={criterion!r}, max_error={limit!r}, output={out!r}, force=True)
    again = fidelity.relative_error(fidelity.measure({out!r}, fidelity.measure_dense({model!r})))
    extra = {{"macs": r.report["macs"]["after"] / max(r.report["macs"]["before"], 1),
              "params": r.report["params"]["after"] / max(r.report["params"]["before"], 1),
              "error": again, "cosine": r.report["fidelity"]["cosine"], "top1": r.report["fidelity"]["top1"],
              "evaluations": r.report["max_error"]["evaluations"]}}
except SpacError as exc:
    extra = {{"refused": "refused: " + str(exc).split(": ")[-1][:80]}}
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--max-error", type=float, default=0.05)
    parser.add_argument("--criteria", default="l2,obspa")
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per (model, criterion) run")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in sorted(Path(args.folder).glob("*.onnx")):
            for criterion in args.criteria.split(","):
                out = str(Path(tmp) / f"{model.stem}.{criterion}.onnx")
                try:
                    result = measure(RUN.format(model=str(model), criterion=criterion, limit=args.max_error, out=out),
                                     timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    result = {"refused": f"timed out after {args.timeout} s"}
                row = {"model": model.stem, "criterion": criterion, **result}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))
    shown = []
    for r in rows:
        if "macs" in r:
            shown.append({"model": r["model"], "criterion": r["criterion"], "MACs kept": f"{r['macs']:.3f}",
                          "params kept": f"{r['params']:.3f}", "rel. error": f"{r['error']:.4f}",
                          "cosine": f"{r['cosine']:.4f}", "evaluations": r["evaluations"],
                          "seconds": f"{r['seconds']:.1f}"})
        else:
            shown.append({"model": r["model"], "criterion": r["criterion"],
                          "MACs kept": r.get("refused", r.get("error", "?"))})
    print(markdown_table(shown, ["model", "criterion", "MACs kept", "params kept", "rel. error", "cosine",
                                 "evaluations", "seconds"]))


if __name__ == "__main__":
    main()
