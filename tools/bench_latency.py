"""Benchmark: latency-aware planning (--target-speedup) vs uniform MACs targets, measured in one run.

    SPAC_BENCH_CLOCK=thread python tools/bench_latency.py [--models mobilenet_v2 mobilenet_v3_small resnet50]
        [--speedup 2] [--batch 1] [--bench-batches 1 8] [--threads 1]
        [--fidelity digits_cnn digits_vit open-nsfw attacut-c deepcut] [--fidelity-speedup 1.3]

Part 1, torch-free ImageNet CNNs built with torchvision's widths and random
weights (models/latency_nets.py), 224x224, planned at ``--batch`` (what
``spac prune`` chooses for a dynamic batch: 1) and measured, dense and pruned
interleaved (``spac bench``'s method), at every ``--bench-batches`` size:

1. ``--target-speedup S`` (l2): latency ratio, MACs ratio and the data-free
   output error the prune report measures;
2. a uniform ``--target-macs`` plan bisected to the same measured latency;
3. "never slower than dense" (``--never-slower`` models): l2 at ratio 0.45
   and obspa, at the default options (wide layers snapped to multiples of 8)
   and with ``--round-to 1`` (exact widths, the old default).

Part 2 (``--fidelity``): trained and real models, where fidelity means
something: the ``--target-speedup`` plan against a uniform ``--target-macs``
plan (local ranking, same criterion) bisected to the same measured latency,
judged by accuracy on the held-out split (digits, models/trained) or task
agreement with the dense model (dev set, tools/realmodels/, needs
SPAC_REALMODELS_DIR), and output fidelity (relative L2, worst cosine).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.common import CACHE, ROOT, markdown_table  # noqa: E402

COLUMNS = ["model", "plan", "batch", "dense_ms", "pruned_ms", "latency_ratio", "macs_ratio", "output_error"]
FIDELITY_COLUMNS = ["model", "criterion", "plan", "latency_ratio", "macs_ratio", "task", "task_metric",
                    "rel_l2", "cosine"]


def built(name: str) -> Path:
    import onnx

    from models.latency_nets import NETS

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{name}_built.onnx"
    if not path.exists():
        onnx.save(NETS[name](), str(path))
    return path


def latency_ratio(dense, result, args, batch: Optional[int] = None) -> dict:
    """Dense vs pruned, interleaved, at the plan's input spec (its batch replaced by *batch* when given)."""
    from spa_compiler.latency.speed import measure_pair

    spec = result.compiled.spec if batch is None else result.compiled.spec.with_batch(batch)
    m = measure_pair(dense, result.model, ["CPUExecutionProvider"], args.threads, spec)
    return {"dense_ms": m.dense_ms, "pruned_ms": m.pruned_ms, "latency_ratio": m.ratio}


def rows_at_batches(name: str, plan: str, result, dense: str, args) -> list[dict]:
    macs = result.report["macs"]
    fidelity = result.report.get("fidelity") or {}
    base = {"model": name, "plan": plan, "macs_ratio": macs["after"] / macs["before"],
            "output_error": fidelity.get("rel_error", float("nan"))}
    return [{**base, "batch": batch, **latency_ratio(dense, result, args, batch)} for batch in args.bench_batches]


def same_latency_macs(dense, wanted_ratio: float, args, prune_at: Callable[[float], object]):
    """Bisect a uniform --target-macs until its measured latency ratio is closest to *wanted_ratio*.

    Returns (result, its measured latency at the plan's spec, the MACs target).
    """
    lo, hi, best = 0.02, 1.0, None
    for _ in range(args.bisect):
        mid = (lo + hi) / 2 if best else min(0.95, wanted_ratio)
        result = prune_at(mid)
        ratio = latency_ratio(dense, result, args)["latency_ratio"]
        if best is None or abs(ratio - wanted_ratio) < abs(best[1] - wanted_ratio):
            best = (result, ratio, mid)
        if ratio > wanted_ratio:
            hi = mid
        else:
            lo = mid
    return best


def part1(args) -> list[dict]:
    import spa_compiler

    rows: list[dict] = []
    for name in args.models:
        dense = str(built(name))
        shapes = {"x": (args.batch, 3, 224, 224)}
        target = spa_compiler.prune(dense, criterion="l2", target_speedup=args.speedup, threads=args.threads,
                                    input_shapes=shapes)
        rows += rows_at_batches(name, f"--target-speedup {args.speedup:g}", target, dense, args)
        wanted = latency_ratio(dense, target, args)["latency_ratio"]
        uniform, _, macs = same_latency_macs(dense, wanted, args, lambda m: spa_compiler.prune(
            dense, criterion="l2", target_macs=m, input_shapes=shapes))
        rows += rows_at_batches(name, f"uniform --target-macs {macs:.3f}", uniform, dense, args)
        print(markdown_table(rows, COLUMNS), flush=True)
        if name not in args.never_slower:
            continue
        for criterion, options in (("l2", {"ratio": 0.45}), ("obspa", {})):
            if criterion not in args.never_slower_criteria:
                continue
            for round_to in (None, 1):
                result = spa_compiler.prune(dense, criterion=criterion, round_to=round_to, input_shapes=shapes,
                                            **options)
                label = (f"{criterion} {'--ratio 0.45 ' if options else ''}"
                         f"{'(defaults: snap 8/16)' if round_to is None else '--round-to 1'}")
                rows += rows_at_batches(name, label, result, dense, args)
                print(markdown_table(rows[-len(args.bench_batches):], COLUMNS), flush=True)
    return rows


# -- part 2: fidelity at the same measured latency --------------------------------------------------
@dataclass
class FidelityCase:
    """A model, the input spec latency is planned at, and how a pruned model is judged against the dense one."""

    name: str
    path: str
    shapes: Optional[dict]
    task: str
    judge: Callable[[object], dict]  # pruned ModelProto -> {"task_metric", "rel_l2", "cosine"}


def _relative(dense: list[np.ndarray], pruned: list[np.ndarray]) -> dict:
    from tools.realmodels.common import fidelity

    return fidelity([dense], [pruned])


def digits_case(name: str) -> FidelityCase:
    from spa_compiler.runtime import session

    path = str(ROOT / "models" / "trained" / f"{name}.onnx")
    data = np.load(ROOT / "models" / "trained" / f"{name}_test.npz")
    dense = session(path).run(None, {"x": data["x"]})

    def judge(model) -> dict:
        out = session(model).run(None, {"x": data["x"]})
        return {"task_metric": float((out[0].argmax(1) == data["y"]).mean()), **_relative(dense, out)}

    acc = float((dense[0].argmax(1) == data["y"]).mean())
    return FidelityCase(name, path, {"x": data["x"].shape}, f"held-out accuracy (dense {acc:.3f})", judge)


def realmodel_case(name: str) -> Optional[FidelityCase]:
    import onnxruntime as ort

    from tools.realmodels import all_cases, ensure_models, fidelity, run_all, task_agreement

    root, why = ensure_models(None)
    case = next((c for c in all_cases() if c.name == name), None)
    if root is None or case is None or case.missing():
        print(f"{name}: skipped ({why or 'unknown case or missing packages'})", file=sys.stderr)
        return None
    prepared = case.prepare(root)
    path = str(root / case.file)
    dense = run_all(ort.InferenceSession(path, providers=["CPUExecutionProvider"]), prepared.eval_feeds)

    def judge(model) -> dict:
        pruned = run_all(ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]),
                         prepared.eval_feeds)
        return {"task_metric": task_agreement(prepared, dense, pruned), **fidelity(dense, pruned)}

    return FidelityCase(name, path, None, f"agreement: {case.task}", judge)


def part2(args) -> list[dict]:
    import spa_compiler

    rows: list[dict] = []
    for name in args.fidelity:
        case = digits_case(name) if name.startswith("digits_") else realmodel_case(name)
        if case is None:
            continue
        for criterion in args.criteria:
            target = spa_compiler.prune(case.path, criterion=criterion, target_speedup=args.fidelity_speedup,
                                        threads=args.threads, input_shapes=case.shapes)
            wanted = latency_ratio(case.path, target, args)
            uniform, ratio, macs = same_latency_macs(case.path, wanted["latency_ratio"], args, lambda m: spa_compiler.prune(
                case.path, criterion=criterion, target_macs=m, global_ranking=False, input_shapes=case.shapes))
            for plan, result, measured in ((f"--target-speedup {args.fidelity_speedup:g}", target,
                                            wanted["latency_ratio"]),
                                           (f"uniform --target-macs {macs:.3f}", uniform, ratio)):
                macs_ratio = result.report["macs"]["after"] / result.report["macs"]["before"]
                rows.append({"model": name, "criterion": criterion, "plan": plan, "latency_ratio": measured,
                             "macs_ratio": macs_ratio, "task": case.task, **case.judge(result.model)})
            print(markdown_table(rows[-2:], FIDELITY_COLUMNS), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["mobilenet_v2", "mobilenet_v3_small", "resnet50"])
    parser.add_argument("--speedup", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=1, help="the batch latency is planned at")
    parser.add_argument("--bench-batches", nargs="+", type=int, default=[1, 8],
                        help="batches every plan is measured at (spac bench --batch)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1: no thread-pool stalls on a shared machine)")
    parser.add_argument("--bisect", type=int, default=5)
    parser.add_argument("--never-slower", nargs="*", default=["mobilenet_v2", "mobilenet_v3_small", "resnet50"],
                        help="models to run the l2/obspa never-slower rows on")
    parser.add_argument("--never-slower-criteria", nargs="*", default=["l2", "obspa"])
    parser.add_argument("--fidelity", nargs="*", default=[],
                        help="trained/dev-set models for part 2 (digits_cnn digits_vit open-nsfw attacut-c deepcut)")
    parser.add_argument("--criteria", nargs="+", default=["l2"], help="criteria of part 2's plans")
    parser.add_argument("--fidelity-speedup", type=float, default=1.3,
                        help="part 2's target (trained models lose their task at 2x without fine-tuning)")
    args = parser.parse_args()

    rows = part1(args)
    fidelity = part2(args)
    print()
    if rows:
        print(markdown_table(rows, COLUMNS))
    if fidelity:
        print()
        print(markdown_table(fidelity, FIDELITY_COLUMNS))


if __name__ == "__main__":
    main()
