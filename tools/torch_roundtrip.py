"""Round trip of spa_compiler.torch on every torchvision classification model (and timm models when installed).

For each model (random weights, zero-initialised parameters re-drawn so no
output is trivially zero): prune in place at ``--ratio`` (l2, per group), then
check that the pruned module's outputs equal the pruned ONNX model's
(relative L2 error < 1e-4, eval mode) and that one SGD training step runs
(loss.backward + optimizer.step, finite parameters after).  Each model runs
in its own process (a crash or a timeout fails only that row).

    python tools/torch_roundtrip.py                  # all torchvision classification models
    python tools/torch_roundtrip.py resnet18 vit_b_16
    python tools/torch_roundtrip.py --timm 30        # also the first 30 timm models of TIMM_MODELS

Needs ``pip install -e .[torch]`` (and timm for --timm).  Writes tools/out/torch_roundtrip.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
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
MAX_PARAMETERS = 150_000_000  # larger ones need more memory than a shared 24 GiB machine has for three copies
TIMM_MODELS = ["resnet18", "resnet50d", "efficientnet_b0", "mobilenetv3_small_100", "convnext_atto", "regnetx_002",
               "densenet121", "ghostnet_100", "mixnet_s", "rexnet_100", "dla34", "dpn68", "hrnet_w18_small",
               "cspresnet50", "tf_efficientnet_lite0", "lcnet_050", "repvgg_a0", "resnest14d", "sebotnet33ts_256",
               "vit_tiny_patch16_224", "deit_tiny_patch16_224", "pit_ti_224", "levit_128s", "mobilevit_xxs",
               "poolformer_s12", "convmixer_768_32", "xcit_nano_12_p16_224", "coat_lite_tiny", "efficientformer_l1",
               "fastvit_t8"]


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

        module = timm.create_model(name, pretrained=False)
        size = module.default_cfg.get("input_size", (3, 224, 224))[-1]
        size = 224 if size > 224 else size
    else:
        import torchvision

        kwargs = dict(KWARGS.get(name, {}))
        size = SIZES.get(name, 64)
        if name.startswith("vit_"):
            kwargs["image_size"] = size = VIT_SIZE
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
    if params > MAX_PARAMETERS:
        return {"model": name, "result": "skipped", "why": f"{params / 1e6:.0f}M parameters"}
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
    return {"model": name, "result": "pass" if ok else "FAIL", "error": f"{error:.1e}", "train_step": trained,
            "macs_kept": round(macs["after"] / macs["before"], 3),
            "params_kept": round(sum(p.numel() for p in module.parameters()) / params, 3),
            "frozen_by_torch": len(result.report["torch"]["frozen"]), "seconds": round(seconds, 1)}


def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="torchvision model names (default: all classification models)")
    parser.add_argument("--timm", type=int, default=0, help="also the first N models of TIMM_MODELS")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per model")
    parser.add_argument("--one", nargs=2, metavar=("SOURCE", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("@@ROW@@" + json.dumps(check_one(args.one[1], args.one[0], args.ratio)))
        return
    jobs = [("torchvision", n) for n in (args.names or torchvision_names())]
    jobs += [("timm", n) for n in TIMM_MODELS[:args.timm]]
    rows = []
    for source, name in jobs:
        try:
            proc = subprocess.run([sys.executable, __file__, "--one", source, name, "--ratio", str(args.ratio)],
                                  capture_output=True, text=True, timeout=args.timeout, cwd=str(ROOT),
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
            lines = [line for line in proc.stdout.splitlines() if line.startswith("@@ROW@@")]
            row = json.loads(lines[-1][7:]) if lines else {
                "model": name, "result": "FAIL", "why": (proc.stderr.strip().splitlines() or ["crashed"])[-1][:160]}
        except subprocess.TimeoutExpired:
            row = {"model": name, "result": "FAIL", "why": f"timeout {args.timeout} s"}
        row["source"] = source
        rows.append(row)
        print(json.dumps(row), flush=True)
    columns = ["source", "model", "result", "error", "train_step", "macs_kept", "params_kept", "frozen_by_torch",
               "seconds", "why"]
    table = markdown_table(rows, columns)
    passed = sum(r["result"] == "pass" for r in rows)
    out = ROOT / "tools" / "out" / "torch_roundtrip.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"{passed}/{len(rows)} pass (ratio {args.ratio})\n\n{table}\n")
    print(f"{passed}/{len(rows)} pass -> {out}")


if __name__ == "__main__":
    main()
