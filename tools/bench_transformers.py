"""Benchmark: transformers — compile time and memory vs Torch-Pruning, and latency after pruning heads + MLP.

    pip install -e ".[zoo-torch]" transformers
    python tools/bench_transformers.py [--skip-latency] [--skip-compile]

Part 1: whole ``spac prune --ratio 0.5`` (heads and MLP hidden units) on the
224x224 exports of torchvision vit_b_16 and swin_t, next to Torch-Pruning's
graph build + prune step on the same torchvision models (MetaPruner, L2,
nn.MultiheadAttention heads declared), each in a fresh process whose address
space is capped at 16 GB so a runaway job fails instead of the machine.

Part 2: onnxruntime CPU latency of vit_b_16 (batch 1) and a GPT-2 small
config (batch 1, sequence 128) before and after pruning 50 % of heads and MLP
units, next to the MACs ratio.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.common import gpt2_onnx, markdown_table, measure, torchvision_onnx  # noqa: E402

LIMIT = "import resource; resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))\n"

SPAC = LIMIT + """
import spa_compiler
r = spa_compiler.prune({path!r}, ratio=0.5, criterion="l2", output={out!r}, force=True)
extra = {{"macs_ratio": r.report["macs"]["after"] / r.report["macs"]["before"],
          "groups_pruned": r.report["groups"]["pruned"]}}
"""

TORCH_PRUNING = LIMIT + """
import torch, torchvision, torch_pruning as tp
model = torchvision.models.get_model({name!r}, weights=None).eval()
x = torch.randn(1, 3, 224, 224)
base, _ = tp.utils.count_ops_and_params(model, x)
heads = {{m: m.num_heads for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)}}
ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000]
pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                              ignored_layers=ignored, num_heads=heads, prune_num_heads=bool(heads),
                              prune_head_dims=False, head_pruning_ratio=0.5)
pruner.step()
after, _ = tp.utils.count_ops_and_params(model, x)
extra = {{"macs_ratio": after / base}}
"""


def compile_table() -> str:
    rows = []
    for name in ("vit_b_16", "swin_t"):
        path = torchvision_onnx(name)
        spac = measure(SPAC.format(path=str(path), out=str(path.with_suffix(".pruned.onnx"))))
        tp = measure(TORCH_PRUNING.format(name=name), timeout=1200)
        rows.append({"model": name, "tool": "spac prune (load..save)", **spac})
        rows.append({"model": name, "tool": "Torch-Pruning (graph+prune)", **tp})
    return markdown_table(rows, ["model", "tool", "seconds", "peak_rss_mb", "macs_ratio", "groups_pruned", "error"])


def latency_table(runs: int) -> str:
    import onnx

    import spa_compiler
    from spa_compiler.runtime import bench_pair

    rows = []
    for label, path, dims in (("vit_b_16", torchvision_onnx("vit_b_16"), {}),
                              ("gpt2 (124M config)", gpt2_onnx(), {"seq": 128})):
        dense = onnx.load(str(path))
        result = spa_compiler.prune(dense, ratio=0.5, criterion="l2", round_to=8)
        macs = result.report["macs"]
        ta, tb, provider = bench_pair(dense, result.model, runs=runs, dims=dims)
        rows.append({"model": label, "provider": provider, "dense_ms": ta.median_ms, "pruned_ms": tb.median_ms,
                     "latency_ratio": tb.median_ms / ta.median_ms, "macs_ratio": macs["after"] / macs["before"],
                     "params_ratio": result.report["params"]["after"] / result.report["params"]["before"]})
    return markdown_table(rows, ["model", "provider", "dense_ms", "pruned_ms", "latency_ratio", "macs_ratio",
                                 "params_ratio"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    if not args.skip_compile:
        print(compile_table())
        print()
    if not args.skip_latency:
        print(latency_table(args.runs))


if __name__ == "__main__":
    main()
