"""Prune at any time: spa_compiler.torch against Torch-Pruning at equal MACs and equal epochs, digits CNN and ViT.

Three workflows, each spac row next to Torch-Pruning's equivalent, every row pruned to the same MACs
(``--target-macs``; spac's ``target_macs``, Torch-Pruning's ratio bisected until its own MACs count
matches, as in tools/accuracy_bench.py, whose Torch-Pruning call this reuses):

- ``init``: prune the freshly initialized model (seeded), then train it like the dense model
  (models/train_benchmarks.py recipe: AdamW, one-cycle, batch 64) for ``--epochs``; spac ``l2`` and
  ``snip`` (gradients of one training batch of ``--batch`` samples) next to Torch-Pruning L2 and Taylor
  (gradients of the same batch); the dense model trained as long is the reference row.
- ``finetune``: prune the trained model of models/trained, then fine-tune ``--finetune-epochs`` with the
  same recipe (peak learning rate ``--finetune-lr``); spac ``obspa`` (data-free, default source),
  ``obspa`` with the ``distill`` source, ``taylor`` (same batch), and on the ViT ``obspa --prune-hidden``,
  next to Torch-Pruning L2 and Taylor.
- ``obspa``: the same pruned models *before* fine-tuning (no data, no training): the ``no fine-tuning``
  column of the finetune table.

    pip install -e ".[torch]" scikit-learn torch-pruning
    python tools/anytime_bench.py --seeds 0 --epochs 10 --finetune-epochs 2

Accuracy on each model's held-out digits split; ``init`` rows are the mean over ``--seeds`` (each
seed: its own split and initialization), ``finetune`` rows use the committed trained model and seed 0's
split.  Writes tools/out/anytime_bench.md and one JSON line per run on stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.accuracy_bench import TRAINED, _bisect, tp_prune  # noqa: E402
from tools.common import markdown_table  # noqa: E402

# The ViT's heads are whole atoms and Torch-Pruning keeps the head dims: it cannot go below 0.57 of its MACs.
DEFAULT_TARGETS = {"digits_cnn": 0.5, "digits_vit": 0.6}
INIT_METHODS = ["dense", "spac l2", "spac snip", "TP L2", "TP Taylor"]
TRAINED_METHODS = ["spac obspa", "spac obspa distill", "spac taylor", "TP L2", "TP Taylor"]


def fit(model, x_tr, y_tr, epochs: int, seed: int, lr: float = 3e-3) -> None:
    """The training of models/train_benchmarks.py (AdamW, one-cycle, batch 64); *lr* is the peak rate."""
    import torch
    from torch import nn

    if epochs <= 0:
        return
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * ((len(x_tr) + 63) // 64))
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_tr)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_tr[idx]), y_tr[idx]).backward()
            opt.step()
            sched.step()


def accuracy(model, x_te, y_te) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        return float((model(x_te).argmax(1) == y_te).float().mean())


def prune(method: str, make, x_tr, y_tr, target: float, batch: int, seed: int):
    """A fresh model from *make()* pruned by *method* to *target* MACs: (model, MACs kept, seconds)."""
    import torch

    import spa_compiler.torch as spt

    pick = torch.randperm(len(x_tr), generator=torch.Generator().manual_seed(seed))[:batch]
    grad_batch = (x_tr[pick], y_tr[pick])
    start = time.perf_counter()
    if method == "dense":
        return make(), 1.0, 0.0
    if method.startswith("TP "):
        label = method.split()[1]
        model, macs, _params = _bisect(lambda r: _tp_trial(make(), x_tr[:2], label, r, grad_batch), target)
        return model, macs, time.perf_counter() - start
    # Global ranking lands on the MACs budget (per-group ratios step by whole heads and fall 0.1 short on the ViT);
    # obspa chooses its own allocation by measuring global, per-group and sensitivity-allocated plans.
    options = {"criterion": method.split()[1], "target_macs": target, "verify": False, "seed": seed,
               "global_ranking": True}
    if options["criterion"] in ("snip", "taylor", "grasp", "crop"):
        options["batch"] = grad_batch
    if "distill" in method.split():
        options["hessian"] = "distill"
    if "--prune-hidden" in method.split():
        options["prune_hidden"] = True  # transformers: the residual width too (docs/obspa.md)
    if options["criterion"] == "obspa":
        options.update(verify=True, global_ranking=None)  # the measured ranking needs the fidelity run
    model = make()
    result = spt.prune(model, x_tr[:1], **options)
    return model, result.report["macs"]["after"] / result.report["macs"]["before"], time.perf_counter() - start


def _tp_trial(model, example, label: str, ratio: float, grad_batch):
    model.eval()
    return (model, *tp_prune(model, example, label, ratio, grad_batch))


def init_rows(arch: str, seeds: list[int], epochs: int, target: float, batch: int, methods: list[str]) -> list[dict]:
    """Workflow init: prune at initialization, then train *epochs*; mean over *seeds*."""
    import torch

    from models.train_benchmarks import build, digits

    rows = []
    for method in methods:
        runs = []
        for seed in seeds:
            x_tr, x_te, y_tr, y_te = (torch.from_numpy(a) for a in digits(seed))

            def make():
                torch.manual_seed(seed)
                return build(arch)

            model, macs, seconds = prune(method, make, x_tr, y_tr, target, batch, seed)
            fit(model, x_tr, y_tr, epochs, seed)
            run = {"workflow": "init", "model": arch, "method": method, "seed": seed, "macs": macs,
                   "accuracy": accuracy(model, x_te, y_te), "prune_s": seconds}
            print(json.dumps(run), flush=True)
            runs.append(run)
        acc = [r["accuracy"] for r in runs]
        rows.append({"model": arch, "method": method, "MACs kept": round(float(np.mean([r["macs"] for r in runs])), 3),
                     f"accuracy after {epochs} epochs": _mean_range(acc)})
    return rows


def trained_rows(arch: str, epochs: int, lr: float, target: float, batch: int, methods: list[str]) -> list[dict]:
    """Workflows obspa and finetune: prune the trained model, measure, fine-tune *epochs*, measure again."""
    import torch

    from models.train_benchmarks import build, digits

    x_tr, x_te, y_tr, y_te = (torch.from_numpy(a) for a in digits(0))  # the split the committed model was trained on

    def make():
        model = build(arch)
        model.load_state_dict(torch.load(TRAINED / f"{arch}.pt"))
        return model.eval()

    rows = [{"model": arch, "method": "dense (trained)", "no fine-tuning": round(accuracy(make(), x_te, y_te), 3)}]
    for method in methods:
        model, macs, seconds = prune(method, make, x_tr, y_tr, target, batch, 0)
        before = accuracy(model, x_te, y_te)
        fit(model, x_tr, y_tr, epochs, 0, lr)
        after = accuracy(model, x_te, y_te)
        print(json.dumps({"workflow": "finetune", "model": arch, "method": method, "macs": macs,
                          "no_finetune": before, "finetuned": after, "prune_s": seconds}), flush=True)
        rows.append({"model": arch, "method": method, "MACs kept": round(macs, 3), "no fine-tuning": round(before, 3),
                     f"after {epochs} epochs fine-tuning": round(after, 3), "prune seconds": round(seconds, 1)})
    return rows


def _mean_range(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_TARGETS))
    parser.add_argument("--workflows", nargs="+", default=["init", "finetune"], choices=["init", "finetune"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=10, help="training epochs after pruning at init")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--finetune-lr", type=float, default=1e-3)
    parser.add_argument("--target-macs", type=float, default=None,
                        help="MACs kept (default: 0.5 for the CNN, 0.6 for the ViT, the lowest Torch-Pruning reaches)")
    parser.add_argument("--batch", type=int, default=256, help="training samples the gradient criteria see")
    parser.add_argument("--init-methods", nargs="+", default=INIT_METHODS)
    parser.add_argument("--trained-methods", nargs="+", default=TRAINED_METHODS)
    args = parser.parse_args(argv)
    sections = []
    for arch in args.models:
        target = args.target_macs or DEFAULT_TARGETS[arch]
        if "init" in args.workflows:
            rows = init_rows(arch, args.seeds, args.epochs, target, args.batch, args.init_methods)
            sections.append(f"**{arch}: pruned at init to MACs x{target}, then {args.epochs} epochs** (seeds "
                            f"{args.seeds})\n\n" + markdown_table(rows, list(rows[0])))
        if "finetune" in args.workflows:
            methods = args.trained_methods + (["spac obspa --prune-hidden"] if arch == "digits_vit" else [])
            rows = trained_rows(arch, args.finetune_epochs, args.finetune_lr, target, args.batch, methods)
            columns = list(dict.fromkeys(key for row in rows for key in row))
            sections.append(f"**{arch}: trained model pruned to MACs x{target}, then {args.finetune_epochs} epochs of "
                            "fine-tuning**\n\n" + markdown_table(rows, columns))
    text = "\n\n".join(sections) + "\n"
    out = ROOT / "tools" / "out" / "anytime_bench.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
