"""Benchmark: what OBSPA costs next to L2, in wall time and peak RSS, at the same MACs target.

    python tools/bench_obspa_cost.py [--models resnet50 open-nsfw ...] [--target-macs 0.75] [--dev DIR]

Per model, ``spa_compiler.prune(MODEL, criterion=C, target_macs=T, output=...)`` (what ``spac prune
--criterion C --target-macs T -o OUT`` runs, verification and fidelity measurement included) for
C = l2 and obspa, each in a fresh process: wall seconds from import to written file, peak RSS from
VmHWM, and obspa's seconds divided by l2's, from the same run; CPU seconds (user + system, every thread)
too, since on a shared machine wall time mostly measures the other jobs.  ``resnet50`` is a torchvision-shaped
ResNet-50 at 224x224 with random weights and BatchNorm kept (models/builders.py, written once into
tools/out/, no torch needed); the other names are the dev set's files (``--dev`` or
SPAC_REALMODELS_DIR, every ``*.onnx`` there by default; when the folder is missing, one row says the
dev set was skipped and why).  The table ends with the largest wall and CPU ratios over the models run.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.common import CACHE, markdown_table, measure  # noqa: E402

PRUNE = """
import spa_compiler
r = spa_compiler.prune({path!r}, criterion={criterion!r}, target_macs={target!r}, output={out!r}, force=True)
fid = r.report.get("fidelity") or {{}}
extra = {{"macs": r.report["macs"]["after"] / r.report["macs"]["before"],
         "rel_error": fid.get("relative_error"), "cosine": fid.get("cosine"),
         "stages": r.report["seconds"]}}
"""


COLUMNS = ["model", "l2_s", "obspa_s", "ratio", "l2_cpu_s", "obspa_cpu_s", "cpu_ratio", "l2_rss_mb", "obspa_rss_mb",
           "l2_cos", "obspa_cos", "obspa_macs", "error"]


def resnet50_path(size: int = 224) -> Path:
    """The generated ResNet-50 (random weights, BN kept), written once into tools/out/."""
    path = CACHE / f"resnet50_builder_{size}.onnx"
    if not path.exists():
        import onnx

        from models.builders import resnet50

        CACHE.mkdir(parents=True, exist_ok=True)
        onnx.save(resnet50(hw=size), str(path))
    return path


def model_paths(names, dev: Path | None) -> tuple[dict[str, Path], list[dict]]:
    """Name -> file (``resnet50`` generated, every other name a dev-set file, all of them when none named),
    and rows for the models skipped with the reason (the dev set missing)."""
    present = dev is not None and dev.is_dir() and any(dev.glob("*.onnx"))
    available = {p.stem: p for p in sorted(dev.glob("*.onnx"))} if present else {}
    wanted = names or ["resnet50", *available]
    out, skipped = {}, []
    if not present and (names is None or any(name != "resnet50" for name in names)):
        skipped.append({"model": "dev set", "error": f"skipped: no *.onnx in {dev} (fetch it with "
                                                      f"../shared/realmodels/fetch.sh and set SPAC_REALMODELS_DIR)"})
    for name in wanted:
        if name == "resnet50":
            out[name] = resnet50_path()
        elif name in available:
            out[name] = available[name]
        elif present:
            raise SystemExit(f"bench_obspa_cost: no model {name!r} (dev set: {dev})")
    return out, skipped


def run(path: Path, criterion: str, target: float, timeout: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        code = PRUNE.format(path=str(path), criterion=criterion, target=target, out=str(Path(tmp) / "out.onnx"))
        return measure(code, timeout=timeout)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None, help="resnet50 and/or dev-set names (default: all)")
    parser.add_argument("--dev", type=Path, default=Path(os.environ.get("SPAC_REALMODELS_DIR", "/work/realmodels")))
    parser.add_argument("--target-macs", type=float, default=0.75)
    parser.add_argument("--timeout", type=int, default=1800)
    args = parser.parse_args(argv)
    paths, rows = model_paths(args.models, args.dev)
    for name, path in paths.items():
        l2 = run(path, "l2", args.target_macs, args.timeout)
        obspa = run(path, "obspa", args.target_macs, args.timeout)
        row = {"model": name, "l2_s": l2.get("seconds"), "obspa_s": obspa.get("seconds"),
               "l2_cpu_s": l2.get("cpu_seconds"), "obspa_cpu_s": obspa.get("cpu_seconds"),
               "l2_rss_mb": l2.get("peak_rss_mb"), "obspa_rss_mb": obspa.get("peak_rss_mb"),
               "l2_cos": l2.get("cosine"), "obspa_cos": obspa.get("cosine"),
               "obspa_macs": obspa.get("macs"), "error": obspa.get("error") or l2.get("error") or ""}
        for key, (a, b) in {"ratio": ("obspa_s", "l2_s"), "cpu_ratio": ("obspa_cpu_s", "l2_cpu_s")}.items():
            if row[a] and row[b]:
                row[key] = row[a] / row[b]
        rows.append(row)
        print(f"{name}: {row}", flush=True)
    print(markdown_table(rows, COLUMNS))
    for key in ("ratio", "cpu_ratio"):
        measured = [(row[key], row["model"]) for row in rows if row.get(key)]
        if measured:
            print(f"largest obspa/l2 {key.replace('_', ' ')}: {max(measured)[0]:.2f} ({max(measured)[1]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
