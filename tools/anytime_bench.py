"""Prune at initialization, then train: spa_compiler.torch criteria against the dense model, at equal epochs.

The digits CNN of models/train_benchmarks.py (8x8 digits upsampled to 16x16, BatchNorm, residual blocks) is
built with a seed, pruned in place *before any training* to ``--target-macs`` with each criterion (the
gradient criteria on one training batch of ``--batch`` samples), then trained exactly like the dense model
(AdamW + one-cycle, ``--epochs``); the table gives test accuracy (mean over seeds) and MACs kept.

    pip install -e ".[torch]" scikit-learn
    python tools/anytime_bench.py --seeds 0 1 2 --epochs 20 --target-macs 0.5

Writes tools/out/anytime_bench.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.common import markdown_table  # noqa: E402

METHODS = ["dense", "random", "l2", "snip", "taylor", "grasp", "crop"]


def fit(model, x_tr, y_tr, epochs: int, seed: int) -> None:
    """The training of models/train_benchmarks.py (AdamW, one-cycle, batch 64)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * ((len(x_tr) + 63) // 64))
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_tr)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
            sched.step()


def run(method: str, seed: int, epochs: int, target_macs: float, batch: int) -> dict:
    import torch

    import spa_compiler.torch as spt
    from models.train_benchmarks import build, digits

    x_tr, x_te, y_tr, y_te = (torch.from_numpy(a) for a in digits(seed))
    torch.manual_seed(seed)
    model = build("digits_cnn")
    macs = 1.0
    if method != "dense":
        pick = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(seed))[:batch]
        result = spt.prune(model, x_tr[:1], criterion=method, target_macs=target_macs, verify=False,
                           batch=(x_tr[pick], y_tr[pick]))
        macs = result.report["macs"]["after"] / result.report["macs"]["before"]
    start = time.perf_counter()
    fit(model, x_tr, y_tr, epochs, seed)
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x_te).argmax(1) == y_te).float().mean())
    return {"method": method, "seed": seed, "accuracy": accuracy, "macs_kept": macs,
            "params": sum(p.numel() for p in model.parameters()), "train_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=METHODS)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--target-macs", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=256, help="training samples the gradient criteria see")
    args = parser.parse_args()
    rows = []
    for method in args.methods:
        runs = [run(method, seed, args.epochs, args.target_macs, args.batch) for seed in args.seeds]
        for r in runs:
            print(json.dumps(r), flush=True)
        accuracies = [r["accuracy"] for r in runs]
        rows.append({"method": method, "test accuracy (mean)": round(sum(accuracies) / len(runs), 4),
                     "min": round(min(accuracies), 4), "max": round(max(accuracies), 4),
                     "MACs kept": round(sum(r["macs_kept"] for r in runs) / len(runs), 3),
                     "params": runs[0]["params"]})
    table = markdown_table(rows, ["method", "test accuracy (mean)", "min", "max", "MACs kept", "params"])
    head = (f"digits CNN, pruned at init to MACs x{args.target_macs}, then {args.epochs} epochs; "
            f"seeds {args.seeds}; gradient criteria on {args.batch} training samples\n\n")
    out = ROOT / "tools" / "out" / "anytime_bench.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(head + table + "\n")
    print(head + table)


if __name__ == "__main__":
    main()
