"""Benchmark: wall time and peak RSS of ``spac prune --ratio 0.3`` on generated Llama-style decoders.

    python tools/bench_scale.py --params 1B 3B --fp16 [--keep]

Each model is written by models/llama_generator.py (external data) into
tools/out/scale/, then pruned in a fresh process exactly as ``spac prune
--ratio 0.3 -o OUT`` does (MLP hidden units and heads, verification of the
written file included); peak RSS is that process's VmHWM, reported next to
the model's size on disk, and seconds per GB on disk shows whether time
grows in proportion to size.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.common import CACHE, markdown_table, measure  # noqa: E402

PRUNE = """
import spa_compiler
r = spa_compiler.prune({path!r}, ratio=0.3, output={out!r}, force=True)
extra = {{"macs_ratio": r.report["macs"]["after"] / r.report["macs"]["before"]}}
"""


def main() -> None:
    import numpy as np

    from models.llama_generator import LlamaShape, _parse_size, write

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", nargs="+", default=["1B", "3B"])
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the generated models")
    args = parser.parse_args()
    rows = []
    for size in args.params:
        shape = LlamaShape.for_params(_parse_size(size))
        folder = CACHE / "scale" / f"llama_{size}{'_fp16' if args.fp16 else ''}"
        path = folder / "model.onnx"
        if not path.exists():
            write(str(path), shape, np.float16 if args.fp16 else np.float32)
        disk_mb = sum(f.stat().st_size for f in folder.glob("model.onnx*")) / 2**20
        result = measure(PRUNE.format(path=str(path), out=str(folder / "pruned.onnx")), timeout=3600)
        rows.append({"model": f"llama {size}", "params_M": round(shape.params / 1e6), "disk_mb": round(disk_mb),
                     **result, "rss_over_disk": result.get("peak_rss_mb", 0) / disk_mb,
                     "seconds_per_gb": result.get("seconds", 0) / (disk_mb / 1024)})
        if not args.keep:
            shutil.rmtree(folder)
    print(markdown_table(rows, ["model", "params_M", "disk_mb", "seconds", "seconds_per_gb", "peak_rss_mb",
                                "rss_over_disk", "macs_ratio", "error"]))


if __name__ == "__main__":
    main()
