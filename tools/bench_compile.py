"""Benchmark: wall time and peak memory of a whole ``spac prune`` vs Torch-Pruning's graph build + prune.

    pip install -e ".[zoo-torch]"
    python tools/bench_compile.py [--models resnet50 densenet121] [--ratio 0.5]

spac: load -> normalize -> analyze -> score (l2) -> plan -> rewrite -> verify
-> save, on the ONNX export.  Torch-Pruning: DependencyGraph build plus
MagnitudePruner (L2) step at the same ratio, on the same torchvision model.
Each job runs in its own process; the peak RSS includes the interpreter and
its imports (torch's alone is several hundred MB), reported as measured.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.common import markdown_table, measure, torchvision_onnx  # noqa: E402

SPAC = """
import spa_compiler
r = spa_compiler.prune({path!r}, ratio={ratio}, criterion="l2", output={out!r}, force=True)
extra = {{"macs_ratio": r.report["macs"]["after"] / r.report["macs"]["before"]}}
"""

TORCH_PRUNING = """
import torch, torchvision, torch_pruning as tp
model = torchvision.models.get_model({name!r}, weights=None).eval()
x = torch.randn(1, 3, 224, 224)
base, _ = tp.utils.count_ops_and_params(model, x)
t = __import__("time").perf_counter()
ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1000]
pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                   pruning_ratio={ratio}, ignored_layers=ignored)
pruner.step()
after, _ = tp.utils.count_ops_and_params(model, x)
extra = {{"macs_ratio": after / base, "prune_only_seconds": __import__("time").perf_counter() - t}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "densenet121"])
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args()
    rows = []
    for name in args.models:
        path = torchvision_onnx(name)
        out = str(path.with_suffix(".pruned.onnx"))
        spac = measure(SPAC.format(path=str(path), ratio=args.ratio, out=out))
        tp = measure(TORCH_PRUNING.format(name=name, ratio=args.ratio))
        rows.append({"model": name, "tool": "spac prune (load..save)", **spac})
        rows.append({"model": name, "tool": "Torch-Pruning (graph+prune)", **tp})
        if "seconds" in spac and "seconds" in tp:
            rows.append({"model": name, "tool": "ratio spac/TP", "seconds": spac["seconds"] / tp["seconds"],
                         "peak_rss_mb": spac["peak_rss_mb"] / tp["peak_rss_mb"]})
    print(markdown_table(rows, ["model", "tool", "seconds", "peak_rss_mb", "macs_ratio", "prune_only_seconds",
                                "error"]))


if __name__ == "__main__":
    main()
