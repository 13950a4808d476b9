"""Shape inference on a dynamic-H/W detector: onnxruntime's symbolic inference (before) vs the concrete completion.

Builds the DB-like reproducer of ``models/dynamic_shapes.py`` (stride-2 stages,
FPN with Resize and Concat, a head resized to the input size through Shape),
and times, in one run:

- ``symbolic``: what the analysis' last inference did before: ONNX inference,
  then onnxruntime's symbolic inference (sympy) because dims stay unknown;
- ``completed``: ONNX inference completed at concrete dims (``spa_compiler.shapes``);
- ``prune``: a whole L2 prune at ratio 0.3 (no output file);

and checks the MACs the cost model counts at 640x640 against the shapes
onnxruntime produces when it runs the model.

    python tools/bench_shapes.py [--blocks 12] [--width 16]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    from models.dynamic_shapes import detector, measured_macs
    from spa_compiler.api import prune
    from spa_compiler.normalize import normalize
    from spa_compiler.shapes import infer_graph_shapes, light_model, onnx_infer, symbolic_shapes

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args()
    model = detector(levels=5, width=args.width, blocks=args.blocks)
    graph = normalize(model).graph
    t0 = time.perf_counter()
    symbolic_shapes(onnx_infer(light_model(graph)), seconds=3600)
    t1 = time.perf_counter()
    infer_graph_shapes(graph, [], symbolic=True)
    t2 = time.perf_counter()
    result = prune(model, ratio=0.3, verify=False)
    t3 = time.perf_counter()
    at640 = prune(model, ratio=0.3, verify=False, input_shapes={"images": (1, 3, 640, 640)})
    print(json.dumps({
        "nodes": len(model.graph.node),
        "resize": sum(n.op_type == "Resize" for n in model.graph.node),
        "seconds": {"symbolic": round(t1 - t0, 2), "completed": round(t2 - t1, 2), "prune_l2": round(t3 - t2, 2)},
        "speedup_inference": round((t1 - t0) / max(t2 - t1, 1e-9), 1),
        "macs_224": result.report["macs"]["before"],
        "macs_640": at640.report["macs"]["before"],
        "macs_640_measured": measured_macs(model, {"images": np.zeros((1, 3, 640, 640), np.float32)}),
    }, indent=2))


if __name__ == "__main__":
    main()
