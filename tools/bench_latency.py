"""Benchmark: latency-aware planning (--target-speedup) vs uniform MACs targets, measured in one run.

    python tools/bench_latency.py [--models mobilenet_v2 mobilenet_v3_small resnet50] [--speedup 2]
                                  [--batch 1] [--threads 1]

Torch-free: the models are built with torchvision's widths and random weights
(models/latency_nets.py), 224x224.  Per model, in one run on onnxruntime CPU:

1. ``--target-speedup S`` (l2): the measured latency ratio (dense and pruned
   interleaved, spac bench's method), the MACs ratio and the data-free output
   error the prune report measures;
2. a uniform ``--target-macs`` plan bisected to the same measured latency, and
   its output error (lower is better; random weights, so this is a proxy);
3. "never slower than dense": l2 at ratio 0.45 and obspa at its defaults,
   without and with ``--round-to 8``, measured against dense.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.common import CACHE, markdown_table  # noqa: E402


def built(name: str) -> Path:
    import onnx

    from models.latency_nets import NETS

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{name}_built.onnx"
    if not path.exists():
        onnx.save(NETS[name](), str(path))
    return path


def row(name: str, plan: str, result, dense: str, args) -> dict:
    from spa_compiler.latency.speed import measure_pair
    from spa_compiler.runtime import default_providers

    measured = result.report.get("speed")
    if measured is None:  # plans without a latency target: measured here, the same way
        m = measure_pair(dense, result.model, default_providers()[-1:], args.threads, result.compiled.spec)
        measured = {"latency_ratio": m.ratio, "dense_ms": m.dense_ms, "pruned_ms": m.pruned_ms}
    macs = result.report["macs"]
    fidelity = result.report.get("fidelity") or {}
    return {"model": name, "plan": plan, "dense_ms": measured["dense_ms"], "pruned_ms": measured["pruned_ms"],
            "latency_ratio": measured["latency_ratio"], "macs_ratio": macs["after"] / macs["before"],
            "output_error": fidelity.get("rel_error", float("nan"))}


def same_latency_macs(name, dense, wanted_ratio, args, shapes) -> dict:
    """Bisect a uniform --target-macs until its measured latency ratio is about *wanted_ratio*."""
    import spa_compiler

    lo, hi, best = 0.02, 1.0, None
    for _ in range(args.bisect):
        mid = (lo + hi) / 2 if best else min(0.95, wanted_ratio)
        result = spa_compiler.prune(dense, criterion="l2", target_macs=mid, input_shapes=shapes)
        current = row(name, f"--target-macs {mid:.3f}", result, dense, args)
        if best is None or abs(current["latency_ratio"] - wanted_ratio) < abs(best["latency_ratio"] - wanted_ratio):
            best = current
        if current["latency_ratio"] > wanted_ratio:
            hi = mid
        else:
            lo = mid
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "mobilenet_v3_small", "resnet50"])
    parser.add_argument("--speedup", type=float, default=2.0)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1: no thread-pool stalls on a shared machine)")
    parser.add_argument("--bisect", type=int, default=5)
    parser.add_argument("--never-slower", nargs="*", default=["mobilenet_v2", "mobilenet_v3_small"],
                        help="models to run the l2/obspa never-slower rows on")
    args = parser.parse_args()

    import spa_compiler

    rows = []
    for name in args.models:
        dense = str(built(name))
        shapes = {"x": (args.batch, 3, 224, 224)}
        target = spa_compiler.prune(dense, criterion="l2", target_speedup=args.speedup, threads=args.threads,
                                    input_shapes=shapes)
        first = row(name, f"--target-speedup {args.speedup:g}", target, dense, args)
        rows.append(first)
        rows.append(same_latency_macs(name, dense, first["latency_ratio"], args, shapes))
        print(markdown_table(rows[-2:], list(rows[-1])), flush=True)
        if name not in args.never_slower:
            continue
        for criterion, options in (("l2", {"ratio": 0.45}), ("obspa", {})):
            for round_to in (1, 8):
                result = spa_compiler.prune(dense, criterion=criterion, round_to=round_to, input_shapes=shapes,
                                            **options)
                label = f"{criterion} {'--ratio 0.45 ' if options else ''}--round-to {round_to}"
                rows.append(row(name, label, result, dense, args))
                print(markdown_table(rows[-1:], list(rows[-1])), flush=True)
    print()
    print(markdown_table(rows, ["model", "plan", "dense_ms", "pruned_ms", "latency_ratio", "macs_ratio",
                                "output_error"]))


if __name__ == "__main__":
    main()
