"""Shared helpers for the benchmarks: cached torchvision exports and measured subprocesses.

Every measurement runs in a fresh Python process so wall time and peak RSS
(``ru_maxrss``) belong to that one job; numbers are reported side by side
from the same run, never compared across runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "tools" / "out"


def torchvision_onnx(name: str, size: int = 224) -> Path:
    """Export (once) a torchvision model with random weights, BatchNorm kept, dynamic batch."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{name}_{size}.onnx"
    if not path.exists():
        sys.path.insert(0, str(ROOT))
        from models.export_torchvision import export

        export(name, str(path), size)
    return path


# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child would report its parent's peak.
MEASURE = r'''
import json, sys, time
def _hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
def _cpu():
    import resource
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
base = _hwm_mb()
t0, c0 = time.perf_counter(), _cpu()
exec(sys.argv[1])
print("@@RESULT@@" + json.dumps({"seconds": time.perf_counter() - t0, "cpu_seconds": _cpu() - c0,
      "peak_rss_mb": _hwm_mb(), "start_rss_mb": base, **globals().get("extra", {})}))
'''


def measure(code: str, python: str = sys.executable, timeout: int = 1800) -> dict:
    """Run *code* in a fresh interpreter; return its wall and CPU seconds (all its threads), peak RSS and any
    ``extra`` dict it sets."""
    try:
        proc = subprocess.run([python, "-c", MEASURE, code], capture_output=True, text=True, timeout=timeout,
                              cwd=str(ROOT), env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired:  # one row says so; the other models' rows are kept
        return {"error": f"timed out after {timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@"):])
    return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:300]}


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        out.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(out)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def gpt2_onnx(layers: int = 12, width: int = 768, heads: int = 12, vocab: int = 50257) -> Path:
    """Export (once) a GPT-2 built from a config (GPT-2 small by default), random weights, dynamic batch/seq."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"gpt2_{layers}x{width}.onnx"
    if not path.exists():
        import torch
        import transformers as tf

        cfg = tf.GPT2Config(vocab_size=vocab, n_embd=width, n_layer=layers, n_head=heads,
                            attn_implementation="eager")
        model = tf.GPT2LMHeadModel(cfg).eval()

        class Logits(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, ids):
                return self.model(ids)[0]  # use_cache=False with no mask trips the packed-sequence check

        torch.onnx.export(Logits().eval(), (torch.randint(0, vocab, (2, 16)),), str(path),  # batch 1 trips aten::diff
                          input_names=["input_ids"], output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"}},
                          opset_version=17, do_constant_folding=False, dynamo=False)
    return path
