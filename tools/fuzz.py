"""Seeded, time-boxed fuzzer for ``spac prune``: hostile models and hostile file systems.

Each case is one folder holding a mutated input (and whatever file-system trap
the case sets), then one ``spac prune`` run in a subprocess under a memory
limit (``RLIMIT_AS``) and a time limit.  The outcome is classified:

    ok          exit 0, the output passes onnx.checker, nothing else new in the folder
    refused     exit 2 or 3 with one ``spac: error:`` line and nothing left behind
    exit1       exit 1 ("internal error" or a compile failure on a model it accepted)
    traceback   a Python traceback on stderr
    multiline   a failure whose stderr is more than one line
    modified    a file the run reads (model, external data, calibration) changed, or a
                special file (FIFO) was replaced
    leftover    a failed run left files, or any run left a hidden staging folder
    bad_output  exit 0 but the written model fails onnx.checker
    hang        over the time limit;  memory: over the memory limit (killed or MemoryError)

Usage::

    python tools/fuzz.py --cases 2000 --seed 0 --jobs 2 [--budget 1200] [--json results.json]

Cases are a pure function of (seed, index): a problem case is reproduced with
``--only INDEX --keep`` (its folder is kept and printed).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MEMORY_LIMIT = 4 * 2**30
TIME_LIMIT = 60
PROBLEMS = ("exit1", "traceback", "multiline", "modified", "leftover", "bad_output", "hang", "memory", "other")
KINDS = ("bytes", "proto", "external", "fs")


@dataclass
class Case:
    """One fuzz case: a folder, the prune arguments, and which files the run must leave alone."""

    index: int
    kind: str
    what: str
    folder: Path
    args: list[str]
    reads: list[Path] = field(default_factory=list)  # must stay byte-identical
    special: list[Path] = field(default_factory=list)  # non-regular files that must stay what they are
    outputs: list[Path] = field(default_factory=list)  # what a successful run may create


@dataclass
class Outcome:
    index: int
    kind: str
    what: str
    verdict: str
    code: Optional[int]
    seconds: float
    message: str = ""


# ---------------------------------------------------------------- base models


def base_models() -> list[onnx.ModelProto]:
    """Small valid models covering the main rules (the demo CNN first: it has BatchNorm and a head)."""
    from models import builders

    demo = onnx.load(str(ROOT / "models" / "demo_cnn.onnx"))
    return [demo] + [getattr(builders, name)() for name in (
        "residual", "concat_dense", "depthwise", "se_block", "flatten_gemm", "split_branches", "group_norm",
        "linear_layouts")]


# ---------------------------------------------------------------- structured mutations

Mutation = Callable[[onnx.ModelProto, np.random.Generator], str]

ODD_INTS = (0, -1, 1, 2, 3, 7, 2**31, 2**40, -(2**31))


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def mutate_dims(model, rng) -> str:
    if not model.graph.initializer:
        return "none"
    tensor = _pick(rng, model.graph.initializer)
    dims = list(tensor.dims) or [1]
    i = int(rng.integers(len(dims)))
    choice = int(rng.integers(4))
    if choice == 0:
        dims[i] = int(_pick(rng, ODD_INTS))
    elif choice == 1:
        dims[i] += int(rng.integers(-2, 3))
    elif choice == 2:
        dims = dims[::-1]
    else:
        dims = dims + [1] if rng.random() < 0.5 else dims[:-1]
    del tensor.dims[:]
    tensor.dims.extend(dims)
    return f"dims of {tensor.name} -> {dims}"


def mutate_dtype(model, rng) -> str:
    if not model.graph.initializer:
        return "none"
    tensor = _pick(rng, model.graph.initializer)
    tensor.data_type = int(_pick(rng, (0, 2, 3, 6, 7, 8, 9, 10, 11, 16, 99)))
    return f"dtype of {tensor.name} -> {tensor.data_type}"


def mutate_attribute(model, rng) -> str:
    nodes = [n for n in model.graph.node if n.attribute]
    if not nodes:
        return "none"
    node = _pick(rng, nodes)
    attr = _pick(rng, node.attribute)
    choice = int(rng.integers(5))
    if choice == 0:
        new = helper.make_attribute(attr.name, int(_pick(rng, ODD_INTS)))
    elif choice == 1:
        new = helper.make_attribute(attr.name, ["a"])
    elif choice == 2:
        new = helper.make_attribute(attr.name, [int(_pick(rng, ODD_INTS)) for _ in range(int(rng.integers(0, 5)))],
                                    attr_type=onnx.AttributeProto.INTS)
    elif choice == 3:
        new = helper.make_attribute(attr.name, float(_pick(rng, (np.nan, np.inf, -1.0, 1e30))))
    else:
        node.attribute.remove(attr)
        return f"attribute {attr.name} of {node.name} removed"
    attr.CopyFrom(new)
    return f"attribute {attr.name} of {node.name} -> {new.type}"


def mutate_node_order(model, rng) -> str:
    nodes = list(model.graph.node)
    if rng.random() < 0.5:
        nodes.reverse()
        what = "reversed"
    else:
        rng.shuffle(nodes)
        what = "shuffled"
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return f"node order {what}"


def mutate_data(model, rng) -> str:
    floats = [t for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and t.raw_data]
    if not floats:
        return "none"
    tensor = _pick(rng, floats)
    try:
        values = numpy_helper.to_array(tensor).copy()
    except (ValueError, TypeError):  # an earlier mutation broke it already
        return "none"
    choice = int(rng.integers(5))
    if choice == 0:
        values[...] = np.nan
    elif choice == 1:
        values.reshape(-1)[int(rng.integers(values.size))] = np.inf
    elif choice == 2:
        values *= np.float32(1e30)
    elif choice == 3:
        tensor.raw_data = tensor.raw_data[: int(rng.integers(len(tensor.raw_data)))]
        return f"data of {tensor.name} truncated"
    else:
        values[...] = 0
    tensor.raw_data = values.tobytes()
    return f"data of {tensor.name} ({('nan', 'one inf', 'x1e30', '', 'zeros')[choice]})"


def mutate_op(model, rng) -> str:
    node = _pick(rng, model.graph.node)
    node.op_type = _pick(rng, ("Relu", "Conv", "Add", "Concat", "Reshape", "NoSuchOp", "Loop", "Identity", "MatMul"))
    if rng.random() < 0.2:
        node.domain = _pick(rng, ("custom", "ai.onnx.ml", "com.microsoft"))
    return f"{node.name} -> {node.domain}:{node.op_type}"


def mutate_wiring(model, rng) -> str:
    node = _pick(rng, model.graph.node)
    names = [o for n in model.graph.node for o in n.output] + [i.name for i in model.graph.initializer] + ["ghost", ""]
    choice = int(rng.integers(4))
    if choice == 0 and node.input:
        node.input[int(rng.integers(len(node.input)))] = _pick(rng, names)
    elif choice == 1:
        model.graph.node.remove(node)
        return f"{node.name} removed"
    elif choice == 2:
        model.graph.node.append(node)
        return f"{node.name} duplicated"
    else:
        node.input.append(_pick(rng, names))
    return f"inputs of {node.name} -> {list(node.input)}"


def mutate_signature(model, rng) -> str:
    choice = int(rng.integers(4))
    if choice == 0:
        value = model.graph.input[0]
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[int(rng.integers(len(dims)))].dim_value = int(_pick(rng, (0, 1, 2**20, 2**31, 5)))
        return "graph input dims"
    if choice == 1:
        model.opset_import[0].version = int(_pick(rng, (1, 6, 7, 11, 13, 18, 21, 99)))
        return f"opset {model.opset_import[0].version}"
    if choice == 2:
        model.ir_version = int(_pick(rng, (0, 1, 3, 7, 10, 99)))
        return f"ir_version {model.ir_version}"
    del model.graph.output[:]
    return "no outputs"


MUTATIONS: tuple[Mutation, ...] = (mutate_dims, mutate_dtype, mutate_attribute, mutate_node_order, mutate_data,
                                   mutate_op, mutate_wiring, mutate_signature)


# ---------------------------------------------------------------- cases


def _externalize(model: onnx.ModelProto, folder: Path, name: str = "in.onnx.data") -> list[onnx.TensorProto]:
    """Move every initializer of >= 64 bytes into *folder*/*name*; returns the moved tensors."""
    moved, offset = [], 0
    with open(folder / name, "wb") as data:
        for tensor in model.graph.initializer:
            if not tensor.raw_data or len(tensor.raw_data) < 64:
                continue
            data.write(tensor.raw_data)
            length = len(tensor.raw_data)
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", name), ("offset", str(offset)), ("length", str(length))):
                tensor.external_data.add(key=key, value=value)
            offset += length
            moved.append(tensor)
    return moved


def _external_case(model, rng, folder: Path) -> str:
    moved = _externalize(model, folder)
    if not moved:
        return "no external tensor"
    tensor = _pick(rng, moved)
    entry = {e.key: e for e in tensor.external_data}
    choice = int(rng.integers(9))
    if choice == 0:
        entry["offset"].value = str(int(_pick(rng, (-64, -1, 2**40, 3))))
    elif choice == 1:
        entry["length"].value = str(int(_pick(rng, (-4, 0, 2**40, 5))))
    elif choice == 2:
        entry["location"].value = _pick(rng, ("../outside.bin", "/etc/hostname", "missing.bin", "", "."))
    elif choice == 3:
        os.mkfifo(folder / "fifo.bin")
        entry["location"].value = "fifo.bin"
    elif choice == 4:
        (folder / "in.onnx.data").write_bytes((folder / "in.onnx.data").read_bytes()[:-7])
        return "data file truncated"
    elif choice == 5:
        data = bytearray((folder / "in.onnx.data").read_bytes())
        data[: len(data) // 2] = b"\xff" * (len(data) // 2)  # NaN bit patterns
        (folder / "in.onnx.data").write_bytes(bytes(data))
        return "data file NaN"
    elif choice == 6:
        os.replace(folder / "in.onnx.data", folder / "out.onnx.data")
        for t in moved:
            next(e for e in t.external_data if e.key == "location").value = "out.onnx.data"
        return "input data named like the output's"
    elif choice == 7:
        tensor.external_data.add(key="checksum", value="x")
        return "unknown external key"
    else:
        return "valid external data"
    return f"external {tensor.name}: {choice}"


FS_CASES = ("output_fifo", "output_folder", "output_missing_folder", "output_is_input", "report_is_input",
            "report_is_output", "report_missing_folder", "report_fifo", "data_fifo", "output_symlink_to_input",
            "stale_stage", "input_folder", "input_empty", "input_fifo", "calib_garbage", "report_is_calib",
            "output_is_input_data", "existing_output")


def _fs_case(model, rng, folder: Path, args: list[str], case: Case) -> str:
    which = _pick(rng, FS_CASES)
    path = folder / "in.onnx"
    out = folder / "out.onnx"
    if which == "output_fifo":
        os.mkfifo(out)
        case.special.append(out)
    elif which == "output_folder":
        out.mkdir()
    elif which == "output_missing_folder":
        args[args.index(str(out))] = str(folder / "nowhere" / "out.onnx")
    elif which == "output_is_input":
        args[args.index(str(out))] = str(path)
    elif which == "report_is_input":
        args += ["--report", str(path)]
    elif which == "report_is_output":
        args += ["--report", str(out)]
    elif which == "report_missing_folder":
        args += ["--report", str(folder / "nowhere" / "r.json")]
    elif which == "report_fifo":
        os.mkfifo(folder / "r.json")
        case.special.append(folder / "r.json")
        args += ["--report", str(folder / "r.json")]
    elif which == "data_fifo":
        os.mkfifo(folder / "out.onnx.data")
        case.special.append(folder / "out.onnx.data")
        _externalize(model, folder)
    elif which == "output_symlink_to_input":
        out.symlink_to(path)
    elif which == "stale_stage":
        stale = folder / ".out.onnx.spac-999999999-x"
        stale.mkdir()
        (stale / "junk").write_bytes(b"junk")
    elif which == "input_folder":
        path.mkdir()
        return which
    elif which == "input_empty":
        path.write_bytes(b"")
        return which
    elif which == "input_fifo":
        os.mkfifo(path)
        case.special.append(path)
        return which
    elif which in ("calib_garbage", "report_is_calib"):
        calib = folder / "calib.npz"
        calib.write_bytes(bytes(rng.integers(0, 256, 64, dtype=np.uint8)) if which == "calib_garbage" else b"")
        if which == "report_is_calib":
            np.savez(calib, x=np.zeros((2, 3, 32, 32), np.float32))
            args += ["--report", str(calib)]
        args += ["--calib", str(calib)]
    elif which == "output_is_input_data":
        _externalize(model, folder)
        args[args.index(str(out))] = str(folder / "in.onnx.data")
    elif which == "existing_output":
        out.write_bytes(b"old output")
    path.write_bytes(model.SerializeToString())
    return which


def _options(rng) -> list[str]:
    options = ["--ratio", str(_pick(rng, (0.5, 0.5, 0.3, 0.0, 0.99, 1.0)))]
    if rng.random() < 0.2:  # the statistics run: a hostile model must fail there as cleanly as anywhere
        options += ["--criterion", _pick(rng, ("obspa", "wanda", "activation")), "--samples", "4"]
    if rng.random() < 0.1:
        options += ["--global"]
    if rng.random() < 0.1:
        options += ["--round-to", "4"]
    if rng.random() < 0.1:
        options += ["--no-verify"]
    return options


def make_case(seed: int, index: int, root: Path, bases: list[onnx.ModelProto]) -> Case:
    """The case *index* of run *seed*: deterministic, written under *root*."""
    rng = np.random.default_rng([seed, index])
    kind = KINDS[int(rng.choice(len(KINDS), p=[0.25, 0.45, 0.15, 0.15]))]
    folder = root / f"case{index:05d}"
    folder.mkdir(parents=True)
    model = onnx.ModelProto()
    model.CopyFrom(bases[0] if kind == "bytes" else _pick(rng, bases))
    path, out = folder / "in.onnx", folder / "out.onnx"
    args = ["prune", str(path), "-o", str(out), *_options(rng)]
    case = Case(index, kind, "", folder, args)
    if kind == "bytes":
        data = bytearray(model.SerializeToString())
        if rng.random() < 0.3:
            data = data[: int(rng.integers(1, len(data)))]
            case.what = "truncated"
        else:
            for pos in rng.integers(0, min(len(data), 6000), size=int(rng.integers(1, 10))):
                data[pos] = int(rng.integers(0, 256))
            case.what = "bytes flipped"
        path.write_bytes(bytes(data))
    elif kind == "proto":
        whats = []
        for _ in range(int(rng.integers(1, 4))):
            try:
                whats.append(_pick(rng, MUTATIONS)(model, rng))
            except (ValueError, TypeError, IndexError) as exc:  # a mutation of an already broken model
                whats.append(f"mutation skipped ({type(exc).__name__})")
        case.what = "; ".join(whats)[:200]
        path.write_bytes(model.SerializeToString())
    elif kind == "external":
        case.what = _external_case(model, rng, folder)
        path.write_bytes(model.SerializeToString())
    else:
        case.what = _fs_case(model, rng, folder, case.args, case)
    case.reads = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
                        and p.suffix in (".onnx", ".data", ".bin", ".npz") and p.name != "out.onnx")
    report = next((Path(case.args[i + 1]) for i, a in enumerate(case.args) if a == "--report"), None)
    written = Path(case.args[case.args.index("-o") + 1])
    case.outputs = [written, written.parent / (written.name + ".data")] + ([report] if report else [])
    return case


# ---------------------------------------------------------------- running and classifying


def _snapshot(case: Case) -> dict:
    """What must not change: hashes of read files, the type of special files, the folder's entries."""
    digests = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in case.reads if p.is_file()}
    kinds = {str(p): stat.S_IFMT(os.lstat(p).st_mode) for p in case.special}
    entries = {str(p) for p in case.folder.rglob("*")}
    return {"digests": digests, "kinds": kinds, "entries": entries}


def _limits() -> None:  # runs in the child before exec
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    os.setsid()


def run_subprocess(case: Case, time_limit: float = TIME_LIMIT) -> tuple[Optional[int], str, float, bool]:
    """(exit code, stderr, seconds, timed out) of ``spac`` on *case* under the memory and time limits."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # spac as installed (passes/ maps to spa_compiler.passes)
    env.pop("SPAC_DEBUG", None)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "spa_compiler.cli", *case.args, "--no-progress"],
                            cwd=case.folder, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, preexec_fn=_limits)
    try:
        _, err = proc.communicate(timeout=time_limit)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        timed_out = True
    return proc.returncode, err.decode(errors="replace"), time.monotonic() - start, timed_out


def run_inprocess(case: Case) -> tuple[Optional[int], str, float, bool]:
    """The same through click's CliRunner (for the fast CI subset: no limits, no interpreter start)."""
    import traceback

    from click.testing import CliRunner

    from spa_compiler.cli import main

    start = time.monotonic()
    result = CliRunner().invoke(main, [*case.args, "--no-progress"])
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += "".join(traceback.format_exception(result.exception))
    return result.exit_code, text, time.monotonic() - start, False


def classify(case: Case, before: dict, code: Optional[int], err: str, timed_out: bool) -> tuple[str, str]:
    """(verdict, message) of one finished run."""
    lines = [line for line in err.strip().splitlines() if line and not line.startswith("[spac]")
             and not line.startswith("spac: warning:")]
    message = lines[-1][:200] if lines else ""
    after = _snapshot(case)
    if timed_out:
        return "hang", message
    if "MemoryError" in err or "bad_alloc" in err or code in (-9, 137):
        return "memory", message
    if "Traceback" in err:
        return "traceback", message
    if after["digests"] != before["digests"] or after["kinds"] != before["kinds"]:
        changed = [p for p in before["digests"] if before["digests"][p] != after["digests"].get(p)]
        changed += [p for p in before["kinds"] if before["kinds"][p] != after["kinds"].get(p)]
        return "modified", f"{', '.join(Path(p).name for p in changed)}: {message}"
    allowed = {str(p) for p in case.outputs} if code == 0 else set()
    new = sorted(Path(p).name for p in after["entries"] - before["entries"] - allowed)
    stages = [p for p in after["entries"] - before["entries"] if "/.out.onnx." in p or "/.r.json." in p]
    if new or stages:
        return "leftover", f"{', '.join(new + [Path(p).name for p in stages])[:120]} ({message})"
    if code == 0:
        written = Path(case.args[case.args.index("-o") + 1])
        try:
            onnx.checker.check_model(str(written))
        except Exception as exc:  # noqa: BLE001
            return "bad_output", str(exc).splitlines()[0][:200]
        return "ok", ""
    if code == 1:
        return "exit1", message
    if code in (2, 3):
        return ("refused" if len(lines) == 1 and lines[0].startswith("spac: error:") else "multiline"), message
    return "other", f"exit {code}: {message}"


def run_case(seed: int, index: int, root: Path, bases, inprocess: bool = False, keep: bool = False) -> Outcome:
    case = make_case(seed, index, root, bases)
    try:
        before = _snapshot(case)
        code, err, seconds, timed_out = (run_inprocess if inprocess else run_subprocess)(case)
        verdict, message = classify(case, before, code, err, timed_out)
        return Outcome(index, case.kind, case.what, verdict, code, round(seconds, 2), message)
    finally:
        if not keep:
            shutil.rmtree(case.folder, ignore_errors=True)


def fuzz(cases: int, seed: int = 0, jobs: int = 2, budget: float = 1200.0, inprocess: bool = False,
         keep: bool = False, only: Optional[int] = None, root: Optional[Path] = None,
         report: Optional[Callable[[Outcome], None]] = None) -> list[Outcome]:
    """Run cases 0..cases-1 (or just *only*) until done or *budget* seconds have passed."""
    bases = base_models()
    root = Path(root or tempfile.mkdtemp(prefix="spac-fuzz-"))
    deadline = time.monotonic() + budget
    indices = [only] if only is not None else list(range(cases))
    outcomes: list[Outcome] = []

    def one(index: int) -> Optional[Outcome]:
        if time.monotonic() > deadline:
            return None
        outcome = run_case(seed, index, root, bases, inprocess=inprocess, keep=keep)
        if report:
            report(outcome)
        return outcome

    if inprocess or jobs <= 1:
        results = [one(i) for i in indices]
    else:
        with ThreadPoolExecutor(jobs) as pool:
            results = list(pool.map(one, indices))
    outcomes = [o for o in results if o is not None]
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return outcomes


def summary(outcomes: list[Outcome]) -> str:
    """A table of verdicts per case kind, then the problem cases."""
    verdicts = ["ok", "refused", *PROBLEMS]
    counts = Counter((o.kind, o.verdict) for o in outcomes)
    rows = [f"{'kind':<10}" + "".join(f"{v:>11}" for v in verdicts) + f"{'total':>8}"]
    for kind in (*KINDS, "all"):
        mine = [o for o in outcomes if kind in (o.kind, "all")]
        cells = [sum(counts[(k, v)] for k in KINDS if kind in (k, "all")) for v in verdicts]
        rows.append(f"{kind:<10}" + "".join(f"{c:>11}" for c in cells) + f"{len(mine):>8}")
    slowest = max((o.seconds for o in outcomes), default=0.0)
    rows.append(f"slowest case {slowest:.1f} s (limit {TIME_LIMIT} s, memory limit {MEMORY_LIMIT / 2**30:.0f} GiB)")
    problems = [o for o in outcomes if o.verdict in PROBLEMS]
    for o in problems[:40]:
        rows.append(f"  #{o.index} {o.kind} [{o.verdict}] {o.what[:80]} -> {o.message[:160]}")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--budget", type=float, default=1200.0, help="Stop starting cases after this many seconds.")
    parser.add_argument("--only", type=int, default=None, help="Run only this case index.")
    parser.add_argument("--keep", action="store_true", help="Keep case folders (printed) for reproduction.")
    parser.add_argument("--json", type=Path, default=None, help="Write every outcome here.")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="spac-fuzz-"))
    started = time.monotonic()
    done = Counter()

    def progress(outcome: Outcome) -> None:
        done[outcome.verdict] += 1
        total = sum(done.values())
        if outcome.verdict in PROBLEMS or total % 50 == 0:
            print(f"[{total}] #{outcome.index} {outcome.kind} {outcome.verdict} {outcome.message[:120]}",
                  file=sys.stderr, flush=True)

    outcomes = fuzz(args.cases, args.seed, args.jobs, args.budget, keep=args.keep, only=args.only, root=root,
                    report=progress)
    print(f"spac fuzz: seed {args.seed}, {len(outcomes)} of {args.cases} cases in "
          f"{time.monotonic() - started:.0f} s with {args.jobs} jobs")
    print(summary(outcomes))
    if args.keep:
        print(f"case folders kept under {root}")
    if args.json:
        args.json.write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    return 1 if any(o.verdict in PROBLEMS for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
