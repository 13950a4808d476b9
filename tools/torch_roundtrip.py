"""Round trip of spa_compiler.torch on every torchvision classification model (and timm models when installed).

For each model (random weights, zero-initialised parameters re-drawn so no
output is trivially zero): prune in place at ``--ratio`` (l2, per group), then
check that the pruned module's outputs equal the pruned ONNX model's
(relative L2 error < 1e-4, eval mode) and that one SGD training step runs
(loss.backward + optimizer.step, finite parameters after).  Each model runs
in its own forked process (a crash or a timeout fails only that row).

    python tools/torch_roundtrip.py                  # all torchvision classification models
    python tools/torch_roundtrip.py resnet18 vit_b_16
    python tools/torch_roundtrip.py --timm 40        # also the first 40 timm models of TIMM_MODELS (small inputs)

Needs ``pip install -e .[torch]`` (and timm for --timm).  Writes tools/out/torch_roundtrip.md.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.common import markdown_table  # noqa: E402

TOLERANCE = 1e-4
# Input side per model (default 64): adaptive pools that export only at multiples of their size, minimum sizes.
SIZES = {"alexnet": 224, "vgg11": 224, "vgg11_bn": 224, "vgg13": 224, "vgg13_bn": 224, "vgg16": 224,
         "vgg16_bn": 224, "vgg19": 224, "vgg19_bn": 224, "inception_v3": 96, "maxvit_t": 224}
KWARGS = {"googlenet": {"aux_logits": False, "init_weights": True},
          "inception_v3": {"aux_logits": False, "init_weights": True}}
VIT_SIZE = 32  # torchvision ViTs take image_size
# timm models of the zoo: name -> (input side, create_model kwargs); small inputs keep the CPU run short.
_TOKENS_32 = (32, {"img_size": 32})
_SIDE_64 = (64, {})
TIMM_MODELS: dict[str, tuple[int, dict]] = {
    "resnet18": _SIDE_64, "resnet50d": _SIDE_64, "resnext26ts": _SIDE_64, "efficientnet_b0": _SIDE_64,
    "tf_efficientnet_lite0": _SIDE_64, "mobilenetv3_small_100": _SIDE_64, "mobilenetv3_large_100": _SIDE_64,
    "convnext_atto": _SIDE_64, "regnetx_002": _SIDE_64, "regnety_002": _SIDE_64, "densenet121": _SIDE_64,
    "ghostnet_100": _SIDE_64, "mixnet_s": _SIDE_64, "rexnet_100": _SIDE_64, "dla34": _SIDE_64, "dpn68": _SIDE_64,
    "cspresnet50": _SIDE_64, "lcnet_050": _SIDE_64, "repvgg_a0": _SIDE_64, "resnest14d": _SIDE_64,
    "hrnet_w18_small": _SIDE_64, "poolformer_s12": _SIDE_64, "mobilevit_xxs": _SIDE_64, "fastvit_t8": _SIDE_64,
    "edgenext_xx_small": _SIDE_64, "efficientvit_b0": _SIDE_64, "convmixer_768_32": _SIDE_64,
    "vit_tiny_patch16_224": _TOKENS_32, "vit_small_patch16_224": _TOKENS_32, "deit_tiny_patch16_224": _TOKENS_32,
    "cait_xxs24_224": _TOKENS_32, "beit_base_patch16_224": _TOKENS_32, "mixer_s16_224": (64, {"img_size": 64}),
    "swin_tiny_patch4_window7_224": (64, {"img_size": 64, "window_size": 2}),
    "levit_128s": (64, {"img_size": 64}), "pit_ti_224": (64, {"img_size": 64}),
    "xcit_nano_12_p16_224": (64, {"img_size": 64}), "coat_lite_tiny": (64, {"img_size": 64}),
    "efficientformer_l1": (224, {}), "tiny_vit_5m_224": (224, {}),  # attention biases of a fixed resolution
    "sebotnet33ts_256": (64, {"img_size": 64}),
}


def randomize_zero_parameters(module, seed: int = 0) -> None:
    """Re-draw parameters initialised to all zeros (ViT heads, zero-init residual gammas): outputs must not vanish."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.dtype == torch.float32 and param.numel() > 1 and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)


def build(name: str, source: str):
    """(module, example input) for a model name of torchvision or timm."""
    import torch

    if source == "timm":
        import timm

        size, kwargs = TIMM_MODELS.get(name, (224, {}))
        module = timm.create_model(name, pretrained=False, **kwargs)
    else:
        import torchvision

        kwargs = dict(KWARGS.get(name, {}))
        size = SIZES.get(name, 64)
        if name.startswith("vit_"):
            kwargs["image_size"] = size = VIT_SIZE - VIT_SIZE % int(name.rsplit("_", 1)[1])  # whole patches
        module = torchvision.models.get_model(name, weights=None, **kwargs)
    torch.manual_seed(0)
    randomize_zero_parameters(module)
    return module, torch.randn(2, 3, size, size)


def check_one(name: str, source: str, ratio: float) -> dict:
    """Prune one model in place and run the two checks; a row of the table."""
    import time

    import numpy as np
    import torch

    import spa_compiler.torch as spt
    from spa_compiler.runtime import run

    module, x = build(name, source)
    params = sum(p.numel() for p in module.parameters())
    start = time.perf_counter()
    result = spt.prune(module, x, ratio=ratio)
    seconds = time.perf_counter() - start
    module.eval()
    x1 = x[:1]  # the pruned ONNX model takes the one sample the module was exported with
    with torch.no_grad():
        mine = module(x1)
    mine = (mine if isinstance(mine, torch.Tensor) else mine[0]).numpy()
    theirs = run(result.model, {"input_0": x1.numpy()})[0]
    error = float(np.linalg.norm(mine - theirs) / (np.linalg.norm(theirs) or 1.0))
    module.train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01)
    out = module(x)
    out = out if isinstance(out, torch.Tensor) else out[0]
    out.logsumexp(-1).mean().backward()
    optimizer.step()
    trained = all(torch.isfinite(p).all() for p in module.parameters())
    macs = result.report["macs"]
    ok = error < TOLERANCE and trained
    frozen = result.report["torch"]["frozen"]
    return {"model": name, "input": f"{x.shape[-1]} px", "result": "pass" if ok else "FAIL", "error": f"{error:.1e}",
            "train_step": trained, "params_before": f"{params / 1e6:.2f}M",
            "params_after": f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}M",
            "macs_kept": round(macs["after"] / macs["before"], 3), "frozen_by_torch": len(frozen),
            "why": _frozen_summary(frozen.values()), "seconds": round(seconds, 1), "peak_rss_gb": _peak_rss_gb()}


def _peak_rss_gb() -> float:
    """This process's peak resident memory (the forked child starts from the parent's resident torch import)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def _frozen_summary(reasons) -> str:
    """The torch-side freeze reasons, counted by kind (the group-specific names left out)."""
    kinds: dict[str, int] = {}
    for reason in reasons:
        kind = ("channel Slice/Split" if "cuts channels" in reason else "no adapter" if "no adapter" in reason
                else "not a parameter" if "not a module parameter" in reason else "shared" if "shares" in reason
                else reason[:60])
        kinds[kind] = kinds.get(kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))


def _child(connection, source: str, name: str, ratio: float) -> None:
    try:
        row = check_one(name, source, ratio)
    except Exception as exc:  # noqa: BLE001 - any failure is that model's row
        row = {"model": name, "result": "FAIL", "why": f"{type(exc).__name__}: {exc}".splitlines()[0][:200]}
    connection.send(row)


def run_isolated(source: str, name: str, ratio: float, timeout: int) -> dict:
    """One model in a forked child (torch, torchvision, timm imported once, in the parent): a crash, an
    out-of-memory kill or a timeout fails only that row."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child, args=(sender, source, name, ratio))
    child.start()
    sender.close()
    timed_out = not receiver.poll(timeout)
    try:
        row = None if timed_out else receiver.recv()
    except EOFError:  # the child died without a row (killed for memory, crashed)
        row = None
    if timed_out:
        child.kill()
    child.join()
    if row is None:
        why = f"timeout {timeout} s" if timed_out else \
            f"died without a row (exit code {child.exitcode}; -9: killed, e.g. for memory)"
        row = {"model": name, "result": "FAIL", "why": why}
    return row


def _claim(folder: Path, source: str, name: str) -> bool:
    """True for the one worker that creates the model's claim file first."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        (folder / f"{source}-{name}").open("x").close()
    except FileExistsError:
        return False
    return True


def _preload() -> None:
    """Import the heavy libraries once: on a loaded machine importing torch alone takes a minute."""
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    import spa_compiler.runtime  # noqa: F401
    import spa_compiler.torch  # noqa: F401
    try:
        import timm  # noqa: F401
    except ImportError:
        pass


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="torchvision model names (default: all classification models)")
    parser.add_argument("--timm", type=int, default=0, help="also the first N models of TIMM_MODELS")
    parser.add_argument("--timm-names", nargs="*", default=[], help="timm models to run (any timm name)")
    parser.add_argument("--no-torchvision", action="store_true", help="only the timm models")
    parser.add_argument("--out", default=str(ROOT / "tools" / "out" / "torch_roundtrip.md"))
    parser.add_argument("--jsonl", help="also append every row to this file as it finishes")
    parser.add_argument("--claim-dir", help="skip the models another worker claimed in this folder (several "
                        "workers share one list, e.g. one from each end with --reverse)")
    parser.add_argument("--reverse", action="store_true", help="run the list from its end")
    parser.add_argument("--table-from", nargs="+", metavar="JSONL",
                        help="only write the table of rows saved with --jsonl (runs split over processes; a model's last "
                        "row wins, so a rerun's file listed after the first replaces its rows)")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per model")
    args = parser.parse_args()
    if args.table_from:
        rows = [json.loads(line) for path in args.table_from for line in Path(path).read_text().splitlines()]
        write_table(latest_rows(rows), Path(args.out), args.ratio)
        return
    _preload()
    jobs = [] if args.no_torchvision else [("torchvision", n) for n in (args.names or torchvision_names())]
    jobs += [("timm", n) for n in [*list(TIMM_MODELS)[:args.timm], *args.timm_names]]
    rows = []
    for source, name in reversed(jobs) if args.reverse else jobs:
        if args.claim_dir and not _claim(Path(args.claim_dir), source, name):
            continue
        row = run_isolated(source, name, args.ratio, args.timeout)
        row["source"] = source
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.jsonl:
            with open(args.jsonl, "a") as log:
                log.write(json.dumps(row) + "\n")
    write_table(rows, Path(args.out), args.ratio)


COLUMNS = {"source": "source", "model": "model", "input": "input", "result": "result", "error": "module vs ONNX",
           "train_step": "train step", "params": "params", "macs_kept": "MACs kept",
           "frozen_by_torch": "groups frozen by the torch side", "why": "why frozen / failed"}


def latest_rows(rows: list[dict]) -> list[dict]:
    """One row per (source, model): the last one saved wins (a rerun replaces its row), in first-seen order."""
    by_key: dict[tuple, dict] = {}
    for row in rows:
        by_key[(row.get("source", "torchvision"), row["model"])] = row
    return list(by_key.values())


def write_table(rows: list[dict], out: Path, ratio: float) -> None:
    """The docs/torch.md table (its column names; params as before -> after) with a pass count per source."""
    cells = []
    for row in rows:
        cell = {**row, "result": row["result"] if row["result"] == "pass" else "**FAIL**",
                "train_step": {True: "ok", False: "not finite"}.get(row.get("train_step"), "")}
        if "params_before" in row:
            cell["params"] = f"{row['params_before']} → {row['params_after']}"
        cells.append({title: cell.get(key, "") for key, title in COLUMNS.items()})
    table = markdown_table(cells, list(COLUMNS.values()))
    counts = {}
    for row in rows:
        passed, total = counts.get(row.get("source", "torchvision"), (0, 0))
        counts[row.get("source", "torchvision")] = (passed + (row["result"] == "pass"), total + 1)
    summary = ", ".join(f"{source} {p}/{n} pass" for source, (p, n) in counts.items())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"{summary} (ratio {ratio})\n\n{table}\n")
    print(f"{summary} -> {out}")


if __name__ == "__main__":
    main()
