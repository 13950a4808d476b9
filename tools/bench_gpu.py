"""Benchmark: GPU latency of dense vs pruned ONNX models, executed by PyTorch/cuDNN through onnx2torch.

    pip install -e ".[zoo-torch]" onnx2torch
    python tools/bench_gpu.py [--models resnet50 mobilenet_v2] [--ratio 0.5] [--batch 1 32] [--fp16]

Why not onnxruntime's CUDA provider: where no ``onnxruntime-gpu`` matching the
machine's CUDA can be installed (the lent GPU machines here carry CUDA 13 and
no package index), the pruned file is still a plain ONNX model, so any
executor shows whether its smaller widths run faster.  onnx2torch turns each
file, dense and pruned alike, into a torch module; both run on the same GPU
with the same batch and precision, interleaved in rounds and timed with CUDA
events, so the ratio is the figure to read.  ``spac bench`` does the same on
onnxruntime wherever ``onnxruntime-gpu`` is installed.

Two figures per row: wall latency (what a caller waits, including
onnx2torch's per-node Python dispatch, which dominates at small batches)
and kernel time (the profiler's sum of GPU time per forward: the compute the
model's widths cost, which is what pruning changes).  ``htod_copies`` counts
host-to-device copies per forward (constants onnx2torch keeps on the CPU).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spa_compiler.errors import first_line  # noqa: E402
from tools.common import markdown_table, torchvision_onnx  # noqa: E402


def cuda_median_ms(modules: list, x, rounds: int, runs: int) -> list[float]:
    """Median latency of each module on input *x*, interleaved so clock and thermal drift hit all alike."""
    import torch

    times: list[list[float]] = [[] for _ in modules]
    with torch.inference_mode():
        for module in modules:  # warm-up: cuDNN autotuning, allocations
            for _ in range(10):
                module(x)
        for _ in range(rounds):
            for index, module in enumerate(modules):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(runs):
                    module(x)
                end.record()
                torch.cuda.synchronize()
                times[index].append(start.elapsed_time(end) / runs)
    return [float(np.median(t)) for t in times]


def kernel_ms(module, x, runs: int = 5) -> tuple[float, int]:
    """GPU time of one forward summed over its kernels (the compute, without Python or launch gaps),
    and the host-to-device copies per forward (weights an executor failed to keep on the GPU)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(runs):
            module(x)
        torch.cuda.synchronize()
    events = prof.key_averages()
    device_us = sum(getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0) for e in events)
    copies = sum(e.count for e in events if "HtoD" in e.key)
    return device_us / 1000 / runs, copies // runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--fp16", action="store_true", help="also time both models in half precision")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    import onnx
    import torch
    from onnx2torch import convert

    import spa_compiler

    if not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA device visible to torch")
    torch.backends.cudnn.benchmark = True
    rows = []
    for name in args.models:
        dense_proto = onnx.load(str(torchvision_onnx(name)))
        result = spa_compiler.prune(dense_proto, ratio=args.ratio, criterion="l2", round_to=args.round_to)
        macs = result.report["macs"]
        pair = [convert(dense_proto).eval().cuda(), convert(result.model).eval().cuda()]
        for dtype in [torch.float32] + ([torch.float16] if args.fp16 else []):
            modules = [m.to(dtype) for m in pair]
            for batch in args.batch:
                x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=dtype)
                row = {"model": name, "dtype": str(dtype).replace("torch.", ""), "batch": batch,
                       "macs_ratio": macs["after"] / macs["before"]}
                try:
                    dense_ms, pruned_ms = cuda_median_ms(modules, x, args.rounds, args.runs)
                    row.update(dense_ms=dense_ms, pruned_ms=pruned_ms, latency_ratio=pruned_ms / dense_ms)
                    (dense_k, copies), (pruned_k, _) = (kernel_ms(m, x) for m in modules)
                    row.update(dense_kernel_ms=dense_k, pruned_kernel_ms=pruned_k, kernel_ratio=pruned_k / dense_k,
                               htod_copies=copies)
                except RuntimeError as exc:  # onnx2torch keeps some constants in fp32: a row, not a crash
                    row["error"] = first_line(exc, 80)
                rows.append(row)
                print(row, file=sys.stderr, flush=True)
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print(markdown_table(rows, ["model", "dtype", "batch", "dense_ms", "pruned_ms", "latency_ratio",
                                "dense_kernel_ms", "pruned_kernel_ms", "kernel_ratio", "macs_ratio", "htod_copies",
                                "error"]))


if __name__ == "__main__":
    main()
