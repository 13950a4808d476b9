"""Benchmark: onnxruntime latency before/after pruning, next to the MACs ratio, in one run.

    pip install -e ".[zoo-torch]"    # only to export the torchvision models once
    python tools/bench_latency.py [--models resnet50 mobilenet_v2] [--ratio 0.5] [--threads 0 1]

Both models of a pair run on the same provider with the same thread count,
interleaved in rounds (spac bench's method), so machine noise hits both.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.common import markdown_table, torchvision_onnx  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()

    import onnx

    import spa_compiler
    from spa_compiler.runtime import bench_pair

    rows = []
    for name in args.models:
        path = torchvision_onnx(name)
        dense = onnx.load(str(path))
        result = spa_compiler.prune(dense, ratio=args.ratio, criterion="l2", round_to=args.round_to)
        macs = result.report["macs"]
        for threads in args.threads:
            ta, tb, provider = bench_pair(dense, result.model, batch=args.batch, runs=args.runs, threads=threads)
            rows.append({"model": name, "provider": provider, "threads": threads or "default", "batch": args.batch,
                         "dense_ms": ta.median_ms, "pruned_ms": tb.median_ms,
                         "latency_ratio": tb.median_ms / ta.median_ms,
                         "macs_ratio": macs["after"] / macs["before"],
                         "params_ratio": result.report["params"]["after"] / result.report["params"]["before"]})
    print(markdown_table(rows, ["model", "provider", "threads", "batch", "dense_ms", "pruned_ms", "latency_ratio",
                                "macs_ratio", "params_ratio"]))


if __name__ == "__main__":
    main()
