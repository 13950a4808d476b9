"""Benchmark: test accuracy after pruning with no fine-tuning, for every criterion, in one run.

    pip install -e ".[zoo-torch]" scikit-learn onnxsim    # onnxsim and torch-pruning: reference rows only
    python tools/accuracy_bench.py [--models digits_cnn digits_vit tabular_mlp] [--ratios 0.3 0.5 0.7]

For each trained model in models/trained (see models/train_benchmarks.py):
data-free criteria (random, l1, l2, bn_scale, obspa with each statistics
source), criteria with the calibration split (activation, wanda,
obspa+calib), each of the latter with and without BatchNorm
re-calibration; then the same torch model pruned by Torch-Pruning
(MagnitudeImportance L1/L2, Taylor on the calibration split with the
model's own predictions as labels, Random) and the same ONNX file pruned by
onnxsim (apply_structured_pruning, apply_structured_wanda_pruning with the
same calibration inputs).  Columns: accuracy at each ratio, and the MACs
ratio / params ratio / seconds at the middle ratio.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TRAINED = Path(__file__).resolve().parent.parent / "models" / "trained"


def accuracy(model, name: str) -> float:
    from spa_compiler.verify import session

    data = np.load(TRAINED / f"{name}_test.npz")
    logits = session(model).run(None, {"x": data["x"]})[0]
    return float((logits.argmax(1) == data["y"]).mean())


def spac_rows(name: str, ratios: list[float]) -> list[dict]:
    import onnx

    import spa_compiler

    path = str(TRAINED / f"{name}.onnx")
    calib = str(TRAINED / f"{name}_calib.npz")
    has_bn = any(n.op_type == "BatchNormalization" for n in onnx.load(path).graph.node)
    configs = [("random", {}), ("l1", {}), ("l2", {}), ("bn_scale", {}),
               ("obspa (H=I)", {"criterion": "obspa", "hessian": "identity"}),
               ("obspa (synthetic)", {"criterion": "obspa", "hessian": "synthetic"})]
    if has_bn:
        configs.append(("obspa (bnstat, default)", {"criterion": "obspa", "hessian": "bnstat"}))
    for crit in ("activation", "wanda", "obspa"):
        configs.append((f"{crit} + calib", {"criterion": crit, "calib": calib}))
        if has_bn:
            configs.append((f"{crit} + calib + BN recal", {"criterion": crit, "calib": calib, "recalibrate_bn": True}))
    configs.append(("obspa --global, same MACs as local", {"criterion": "obspa", "global_ranking": True}))
    rows = [{"model": name, "method": "dense", **{f"acc@{r}": accuracy(onnx.load(path), name) for r in ratios}}]
    local_macs = {}
    for label, kw in configs:
        kw = {"criterion": label.split()[0], **kw}
        row = {"model": name, "method": f"spac {label}"}
        for ratio in ratios:
            start = time.perf_counter()
            if kw.get("global_ranking"):  # rank across layers, but at the MACs local pruning reached
                result = spa_compiler.prune(path, target_macs=local_macs[ratio], **kw)
            else:
                result = spa_compiler.prune(path, ratio=ratio, **kw)
                local_macs[ratio] = result.report["macs"]["after"] / result.report["macs"]["before"]
            seconds = time.perf_counter() - start
            row[f"acc@{ratio}"] = accuracy(result.model, name)
            if ratio == ratios[len(ratios) // 2]:
                rep = result.report
                row.update(macs=rep["macs"]["after"] / rep["macs"]["before"],
                           params=rep["params"]["after"] / rep["params"]["before"], seconds=seconds)
        rows.append(row)
    return rows


def torch_pruning_rows(name: str, ratios: list[float]) -> list[dict]:
    try:
        import torch
        import torch_pruning as tp

        from models.train_benchmarks import build
    except ImportError as exc:
        return [{"model": name, "method": f"Torch-Pruning: not installed ({exc.name})"}]
    test = np.load(TRAINED / f"{name}_test.npz")
    calib = torch.from_numpy(np.load(TRAINED / f"{name}_calib.npz")["x"])
    rows = []
    for label in ("L1", "L2", "Taylor", "Random"):
        row = {"model": name, "method": f"Torch-Pruning {label}"}
        for ratio in ratios:
            model = build(name)
            model.load_state_dict(torch.load(TRAINED / f"{name}.pt"))
            model.eval()
            example = calib[:2]
            importance = {"L1": tp.importance.MagnitudeImportance(p=1), "L2": tp.importance.MagnitudeImportance(p=2),
                          "Taylor": tp.importance.TaylorImportance(), "Random": tp.importance.RandomImportance()}[label]
            head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
            heads = {m: m.num_heads for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)}
            start = time.perf_counter()
            try:
                pruner = tp.pruner.MetaPruner(model, example, importance=importance, pruning_ratio=ratio,
                                              ignored_layers=[head], num_heads=heads, prune_num_heads=bool(heads),
                                              prune_head_dims=False)
                base, base_params = tp.utils.count_ops_and_params(model, example)
                if label == "Taylor":
                    with torch.no_grad():
                        labels = model(calib).argmax(1)
                    torch.nn.functional.cross_entropy(model(calib), labels).backward()
                pruner.step()
            except Exception as exc:  # noqa: BLE001 - a peer failing is a row, not a crash
                row[f"acc@{ratio}"] = f"error: {type(exc).__name__}"
                continue
            seconds = time.perf_counter() - start
            with torch.no_grad():
                row[f"acc@{ratio}"] = float((model(torch.from_numpy(test["x"])).argmax(1).numpy() == test["y"]).mean())
            if ratio == ratios[len(ratios) // 2]:
                macs, params = tp.utils.count_ops_and_params(model, example)
                row.update(macs=macs / base, params=params / base_params, seconds=seconds)
        rows.append(row)
    return rows


def onnxsim_rows(name: str, ratios: list[float]) -> list[dict]:
    try:
        from onnxsim import pruning
    except ImportError:
        return [{"model": name, "method": "onnxsim: not installed"}]
    import onnx

    from spa_compiler.cost import totals
    from spa_compiler.normalize import normalize

    path = str(TRAINED / f"{name}.onnx")
    calib = np.load(TRAINED / f"{name}_calib.npz")["x"]
    dense_params, dense_macs = totals(normalize(onnx.load(path)).graph)
    rows = []
    for label, fn in (("structured L2", lambda r: pruning.apply_structured_pruning(path, sparsity=r)),
                      ("structured Wanda + calib", lambda r: pruning.apply_structured_wanda_pruning(
                          path, calibration_data=[{"x": calib[i:i + 32]} for i in range(0, len(calib), 32)],
                          sparsity=r))):
        row = {"model": name, "method": f"onnxsim {label}"}
        for ratio in ratios:
            start = time.perf_counter()
            try:
                model = fn(ratio)
                row[f"acc@{ratio}"] = accuracy(model, name)
            except Exception as exc:  # noqa: BLE001
                row[f"acc@{ratio}"] = f"error: {type(exc).__name__}"
                continue
            if ratio == ratios[len(ratios) // 2]:
                params, macs = totals(normalize(model).graph)
                row.update(macs=macs / dense_macs, params=params / dense_params,
                           seconds=time.perf_counter() - start)
        rows.append(row)
    return rows


def main() -> None:
    from tools.common import markdown_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits_cnn", "digits_vit", "tabular_mlp"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--no-peers", action="store_true", help="skip the Torch-Pruning and onnxsim rows")
    args = parser.parse_args()
    rows = []
    for name in args.models:
        rows += spac_rows(name, args.ratios)
        if not args.no_peers:
            rows += torch_pruning_rows(name, args.ratios) + onnxsim_rows(name, args.ratios)
    mid = args.ratios[len(args.ratios) // 2]
    columns = ["model", "method"] + [f"acc@{r}" for r in args.ratios] + ["macs", "params", "seconds"]
    print(f"accuracy with no fine-tuning; macs/params/seconds at ratio {mid}\n")
    print(markdown_table(rows, columns))


if __name__ == "__main__":
    main()
