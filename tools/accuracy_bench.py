"""Benchmark: test accuracy after pruning with no fine-tuning, every criterion at EQUAL MACs, in one run.

    pip install -e ".[zoo-torch]" scikit-learn torch-pruning onnxsim   # torch: reference rows and MLP seeds
    python tools/accuracy_bench.py [--models digits_cnn digits_vit tabular_mlp] [--ratios 0.3 0.5 0.7]

For each trained model in models/trained (see models/train_benchmarks.py),
each column is one MACs budget: the MACs that removing a fraction r of every
group's channels (local, uniform) leaves.  Every row is pruned to that budget
(``target_macs``), so all rows of a column cost the same:

- data-free criteria: random, l1, l2, bn_scale, obspa with each Hessian source
  (identity, synthetic, bn, weights, bnstat; global ranking, the default),
  obspa with ``--local``, without compensation, with white instead of 1/f² noise, and on
  transformers with ``--prune-hidden``;
- with the calibration split: activation, wanda, obspa + calib, each with and
  without BatchNorm re-calibration;
- Torch-Pruning on the same torch model (MagnitudeImportance L1/L2, Taylor on
  the calibration split with the model's own predictions as labels, Random),
  its pruning ratio bisected until its MACs match the column's budget (its
  seconds include every bisection trial); where it cannot get that low, the
  cell shows the MACs it reached in parentheses;
- onnxsim's structured pruning on the same ONNX file at sparsity r.

The tabular MLP is small and its test split has 171 rows, so its rows are the
mean over ``--mlp-seeds`` models trained with different seeds and splits
(seed 0 is the committed model; others are trained into tools/out/trained).
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
TRAINED = ROOT / "models" / "trained"
SEED_CACHE = ROOT / "tools" / "out" / "trained"
MACS_TOLERANCE = 0.02  # a peer's MACs further than this from the budget are shown next to its accuracy
TP_BISECTIONS = 12


@dataclass
class Bench:
    """One trained model: its architecture name and where its files are."""

    arch: str
    folder: Path
    stem: str

    def file(self, suffix: str) -> str:
        return str(self.folder / f"{self.stem}{suffix}")


def benches(arch: str, seeds: int) -> list[Bench]:
    """The committed model, plus models trained with seeds 1..seeds-1 (cached) when asked for."""
    out = [Bench(arch, TRAINED, arch)]
    for seed in range(1, seeds):
        stem = f"{arch}_seed{seed}"
        if not (SEED_CACHE / f"{stem}.onnx").exists():
            from models.train_benchmarks import train

            train(arch, seed=seed, out=str(SEED_CACHE), stem=stem)
        out.append(Bench(arch, SEED_CACHE, stem))
    return out


def accuracy(model, bench: Bench) -> float:
    from spa_compiler.runtime import session

    data = np.load(bench.file("_test.npz"))
    logits = session(model).run(None, {"x": data["x"]})[0]
    return float((logits.argmax(1) == data["y"]).mean())


def macs_budgets(bench: Bench, ratios: list[float]) -> dict[float, float]:
    """The MACs fraction that removing *ratio* of every group's channels leaves (the column's budget).

    Exact widths (``round_to=1``): the default snap keeps a 64-wide layer at 32 channels for both r=0.5
    and r=0.7, so snapped budgets would collapse two columns into one.
    """
    import spa_compiler

    budgets = {}
    for ratio in ratios:
        report = spa_compiler.prune(bench.file(".onnx"), ratio=ratio, criterion="l2", global_ranking=False,
                                    round_to=1, verify=False).report
        budgets[ratio] = report["macs"]["after"] / report["macs"]["before"]
    return budgets


def spac_configs(has_bn: bool, has_ln: bool, calib: str) -> list[tuple[str, dict]]:
    """(row label, spa_compiler.prune keywords) for every spac row."""
    obspa = {"criterion": "obspa"}
    configs = [(c, {"criterion": c}) for c in ("random", "l1", "l2", "bn_scale")]
    sources = ["identity", "synthetic", "bn", "weights"] + (["bnstat"] if has_bn else [])
    default = "bnstat" if has_bn else "synthetic"
    for source in sources:
        configs.append((f"obspa ({source}{', default' if source == default else ''})", {**obspa, "hessian": source}))
    configs.append((f"obspa ({default}) --local", {**obspa, "global_ranking": False}))
    configs.append((f"obspa ({default}) --no-compensate", {**obspa, "compensate": False}))
    configs.append((f"obspa ({default}) --noise white", {**obspa, "noise": "white"}))
    if has_ln:
        configs.append((f"obspa ({default}) --prune-hidden", {**obspa, "prune_hidden": True}))
    for crit in ("activation", "wanda", "obspa"):
        configs.append((f"{crit} + calib", {"criterion": crit, "calib": calib}))
        if has_bn:
            configs.append((f"{crit} + calib + BN recal", {"criterion": crit, "calib": calib, "recalibrate_bn": True}))
    return configs


def spac_rows(bench: Bench, ratios: list[float], budgets: dict[float, float]) -> list[dict]:
    import onnx

    import spa_compiler

    path = bench.file(".onnx")
    ops = {n.op_type for n in onnx.load(path).graph.node}
    dense = accuracy(onnx.load(path), bench)
    rows = [{"model": bench.arch, "method": "dense", **{f"acc@{r}": dense for r in ratios}}]
    for label, kw in spac_configs("BatchNormalization" in ops, "LayerNormalization" in ops, bench.file("_calib.npz")):
        row = {"model": bench.arch, "method": f"spac {label}"}
        for ratio in ratios:
            start = time.perf_counter()
            result = spa_compiler.prune(path, target_macs=budgets[ratio], **kw)
            rep = result.report
            row[f"acc@{ratio}"] = accuracy(result.model, bench)
            row[f"macs@{ratio}"] = rep["macs"]["after"] / rep["macs"]["before"]
            if ratio == ratios[len(ratios) // 2]:
                row.update(macs=rep["macs"]["after"] / rep["macs"]["before"],
                           params=rep["params"]["after"] / rep["params"]["before"],
                           seconds=time.perf_counter() - start)
        rows.append(row)
        print(f"{bench.stem}: {row['method']}", *(f"{row[f'acc@{r}']:.3f}" for r in ratios), file=sys.stderr)
    return rows


def torch_pruning_rows(bench: Bench, ratios: list[float], budgets: dict[float, float]) -> list[dict]:
    try:
        import torch
        import torch_pruning  # noqa: F401 - the peer must be installed for these rows

        from models.train_benchmarks import build
    except ImportError as exc:
        return [{"model": bench.arch, "method": f"Torch-Pruning: not installed ({exc.name})"}]
    test = np.load(bench.file("_test.npz"))
    calib = torch.from_numpy(np.load(bench.file("_calib.npz"))["x"])
    example = calib[:2]

    def pruned(label: str, ratio: float):
        torch.manual_seed(0)  # RandomImportance draws from torch: the same table on every run
        model = build(bench.arch)
        model.load_state_dict(torch.load(bench.file(".pt")))
        model.eval()
        with torch.no_grad():
            labels = model(calib).argmax(1)  # Taylor: the model's own predictions as labels
        return (model, *tp_prune(model, example, label, ratio, (calib, labels)))

    rows = []
    for label in ("L1", "L2", "Taylor", "Random"):
        row = {"model": bench.arch, "method": f"Torch-Pruning {label} (ratio bisected to equal MACs)"}
        for ratio in ratios:
            start = time.perf_counter()
            try:
                model, macs, params = _bisect(lambda r: pruned(label, r), budgets[ratio])
            except Exception as exc:  # noqa: BLE001 - a peer failing is a row, not a crash
                row[f"acc@{ratio}"] = f"error: {type(exc).__name__}"
                continue
            with torch.no_grad():
                acc = float((model(torch.from_numpy(test["x"])).argmax(1).numpy() == test["y"]).mean())
            row[f"acc@{ratio}"], row[f"macs@{ratio}"] = acc, macs
            if ratio == ratios[len(ratios) // 2]:
                row.update(macs=macs, params=params, seconds=time.perf_counter() - start)
        rows.append(row)
    return rows


def tp_prune(model, example, label: str, ratio: float, taylor_batch: Optional[tuple] = None) -> tuple[float, float]:
    """Prune *model* in place with Torch-Pruning's MetaPruner at *ratio* (the last Linear kept, attention heads
    pruned whole); *label*: L1, L2, Taylor (gradients of the cross-entropy on ``taylor_batch = (inputs,
    targets)``) or Random.  Returns the MACs and parameters kept, as Torch-Pruning counts them."""
    import torch
    import torch_pruning as tp

    importance = {"L1": tp.importance.MagnitudeImportance(p=1), "L2": tp.importance.MagnitudeImportance(p=2),
                  "Taylor": tp.importance.TaylorImportance(), "Random": tp.importance.RandomImportance()}[label]
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)}
    base, base_params = tp.utils.count_ops_and_params(model, example)
    pruner = tp.pruner.MetaPruner(model, example, importance=importance, pruning_ratio=ratio,
                                  ignored_layers=[head], num_heads=heads, prune_num_heads=bool(heads),
                                  prune_head_dims=False)
    if label == "Taylor":
        inputs, targets = taylor_batch
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
    pruner.step()
    macs, params = tp.utils.count_ops_and_params(model, example)
    return macs / base, params / base_params


def _bisect(prune_at: Callable[[float], tuple], budget: float):
    """Torch-Pruning's ratio whose MACs come closest to *budget* (or its lowest reachable MACs)."""
    lo, hi = 0.0, 0.95
    best = prune_at(hi)
    if best[1] > budget:
        return best
    for _ in range(TP_BISECTIONS):
        mid = (lo + hi) / 2
        trial = prune_at(mid)
        if abs(trial[1] - budget) < abs(best[1] - budget):
            best = trial
        if trial[1] <= budget:
            hi = mid
        else:
            lo = mid
    return best


def onnxsim_rows(bench: Bench, ratios: list[float]) -> list[dict]:
    try:
        from onnxsim import pruning
    except ImportError:
        return [{"model": bench.arch, "method": "onnxsim: not installed"}]
    import onnx

    from spa_compiler.cost import totals
    from spa_compiler.normalize import normalize

    path = bench.file(".onnx")
    calib = np.load(bench.file("_calib.npz"))["x"]
    dense_params, dense_macs = totals(normalize(onnx.load(path)).graph)
    rows = []
    for label, fn in (("structured L2", lambda r: pruning.apply_structured_pruning(path, sparsity=r)),
                      ("structured Wanda + calib", lambda r: pruning.apply_structured_wanda_pruning(
                          path, calibration_data=[{"x": calib[i:i + 32]} for i in range(0, len(calib), 32)],
                          sparsity=r))):
        row = {"model": bench.arch, "method": f"onnxsim {label} (sparsity r)"}
        for ratio in ratios:
            start = time.perf_counter()
            try:
                model = fn(ratio)
                row[f"acc@{ratio}"] = accuracy(model, bench)
                row[f"macs@{ratio}"] = totals(normalize(model).graph)[1] / dense_macs
            except Exception as exc:  # noqa: BLE001
                row[f"acc@{ratio}"] = f"error: {type(exc).__name__}"
                continue
            if ratio == ratios[len(ratios) // 2]:
                params, macs = totals(normalize(model).graph)
                row.update(macs=macs / dense_macs, params=params / dense_params,
                           seconds=time.perf_counter() - start)
        rows.append(row)
    return rows


def mark_off_budget(rows: list[dict], ratios: list[float], budgets: dict[float, float]) -> None:
    """Show the MACs next to an accuracy that was not reached at the column's budget (within the tolerance)."""
    for row in rows:
        for ratio in ratios:
            macs, acc = row.pop(f"macs@{ratio}", None), row.get(f"acc@{ratio}")
            if isinstance(macs, float) and isinstance(acc, float) and abs(macs - budgets[ratio]) > MACS_TOLERANCE:
                row[f"acc@{ratio}"] = f"{acc:.3g} (MACs {macs:.2f})"


def mean_rows(runs: list[list[dict]]) -> list[dict]:
    """Average numeric cells of the same row over several seeds (text cells: the first seed's)."""
    merged = []
    for rows in zip(*runs):
        row = dict(rows[0])
        for key, value in rows[0].items():
            values = [r.get(key) for r in rows]
            if all(isinstance(v, float) for v in values):
                row[key] = float(np.mean(values))
        merged.append(row)
    return merged


def model_rows(arch: str, ratios: list[float], seeds: int, peers: bool) -> tuple[list[dict], dict[float, float]]:
    runs, first_budgets = [], None
    for bench in benches(arch, seeds):
        budgets = macs_budgets(bench, ratios)
        first_budgets = first_budgets or budgets
        rows = spac_rows(bench, ratios, budgets)
        if peers:
            rows += torch_pruning_rows(bench, ratios, budgets) + onnxsim_rows(bench, ratios)
        runs.append(rows)
    rows = mean_rows(runs) if len(runs) > 1 else runs[0]
    mark_off_budget(rows, ratios, first_budgets)
    return rows, first_budgets


def main(argv: Optional[list[str]] = None) -> None:
    from tools.common import markdown_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits_cnn", "digits_vit", "tabular_mlp"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--mlp-seeds", type=int, default=5, help="tabular_mlp rows are the mean over this many seeds")
    parser.add_argument("--no-peers", action="store_true", help="skip the Torch-Pruning and onnxsim rows")
    args = parser.parse_args(argv)
    rows, notes = [], []
    for arch in args.models:
        seeds = args.mlp_seeds if arch == "tabular_mlp" else 1
        arch_rows, budgets = model_rows(arch, args.ratios, seeds, not args.no_peers)
        rows += arch_rows
        notes.append(f"{arch}: MACs budgets " + ", ".join(f"r={r}: {budgets[r]:.3f}" for r in args.ratios)
                     + (f" (mean over {seeds} seeds)" if seeds > 1 else ""))
    mid = args.ratios[len(args.ratios) // 2]
    columns = ["model", "method"] + [f"acc@{r}" for r in args.ratios] + ["macs", "params", "seconds"]
    print("accuracy with no fine-tuning; column acc@r: every row pruned to the MACs that removing r of every "
          f"group's channels leaves; macs/params/seconds at r={mid}")
    print("\n".join(f"- {n}" for n in notes) + "\n")
    print(markdown_table(rows, columns))


if __name__ == "__main__":
    main()
