"""Verification and measurement with onnxruntime: does it run, what does it compute, how fast.

Provider choice: CUDA when onnxruntime-gpu is installed *and* a session can
actually be created on it, else CPU; provider errors are silenced so a
machine without a GPU prints nothing alarming.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnx

from .errors import VerificationError, first_line


def _ort():
    import onnxruntime as ort

    ort.set_default_logger_severity(4)  # failures reach the user as our one-line errors, not as ORT logs
    return ort


@lru_cache(maxsize=1)
def default_providers() -> tuple[str, ...]:
    """('CUDAExecutionProvider', 'CPUExecutionProvider') when a GPU session works, else CPU only."""
    ort = _ort()
    if "CUDAExecutionProvider" in ort.get_available_providers():
        probe = onnx.helper.make_model(
            onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "probe",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]),
            opset_imports=[onnx.helper.make_opsetid("", 13)])
        probe.ir_version = 8
        try:
            session = ort.InferenceSession(probe.SerializeToString(), _options(),
                                           providers=["CUDAExecutionProvider"])
            if "CUDAExecutionProvider" in session.get_providers():
                return ("CUDAExecutionProvider", "CPUExecutionProvider")
        except Exception:  # noqa: BLE001 - any failure means "no usable GPU"
            pass
    return ("CPUExecutionProvider",)


# Above this size on disk a verification session is made lean (see _options).
LEAN_SESSION_BYTES = 512 * 2**20


def _options(threads: int = 0, lean: bool = False, spinning: bool = True):
    """Session options; *lean* for verifying large models with the least memory.

    A lean session skips graph optimizations (constant folding would turn
    every fp16 weight into an fp32 copy on CPU up front) and the memory arena
    and patterns (which keep each cast's buffer after use): the weights stay
    memory-mapped from the file and the run only needs one layer at a time.
    """
    ort = _ort()
    options = ort.SessionOptions()
    options.log_severity_level = 4
    if lean:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:  # idle threads sleep: other work shares the cores (obspa/parallel.py)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def session(model, providers: Optional[Sequence[str]] = None, threads: int = 0, lean: bool = False,
            spinning: bool = True):
    """An onnxruntime session of a ModelProto or of a model file (a path keeps weights out of Python);
    *spinning* False when other threads of this process compute while it runs.

    The measurement graphs this package builds feed weights as inputs and expose inner tensors as
    outputs, and onnxruntime's layout-level optimizers (ORT_ENABLE_ALL) can refuse such a graph: a Conv
    whose weight is an input, added to another such Conv's exposed output, fails with "Failed to find
    node output ..." (onnxruntime 1.32).  onnxruntime's own fallback then printed an "EP Error" banner
    and retried; here the session is retried once without those optimizers, silently, and the first
    error is raised when that fails too.
    """
    ort = _ort()
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    chosen = list(providers or default_providers())
    try:
        return ort.InferenceSession(source, _options(threads, lean, spinning), providers=chosen, enable_fallback=0)
    except (RuntimeError, ValueError) as error:
        if lean:  # no graph optimization was asked for: nothing left to turn off
            raise
        options = _options(threads, lean, spinning)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        try:
            return ort.InferenceSession(source, options, providers=chosen, enable_fallback=0)
        except (RuntimeError, ValueError):
            raise error from None


def size_on_disk(path) -> int:
    """Bytes of a model file plus the external data files next to it that it names."""
    from .modelio import external_locations

    folder = Path(path).parent
    return Path(path).stat().st_size + sum((folder / name).stat().st_size for name in external_locations(path))


def random_inputs(sess, batch: Optional[int] = 1, seed: int = 0, dims: Optional[dict[str, int]] = None) -> dict[str, np.ndarray]:
    """Seeded random feeds for every input of *sess* at the input spec's dims (see :mod:`inputspec`).

    *batch* sets symbolic batch dims, *dims* symbolic dims by name.
    """
    from .inputspec import for_session

    return for_session(sess, batch=batch, dims=dims).feeds(seed)


def tensor_outputs(sess) -> list[str]:
    """Names of the session's tensor outputs.

    Sequence and map outputs (skl2onnx's ZipMap of class probabilities) are
    derived from a tensor output the checks already compare; they have no
    shape to check and no array to diff.
    """
    return [meta.name for meta in sess.get_outputs() if meta.type.startswith("tensor")]


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], providers=None) -> list[np.ndarray]:
    sess = session(model, providers)
    return sess.run(None, feeds)


def check_checker(pruned, label: str = "pruned model") -> None:
    """onnx.checker on a ModelProto or a model file (even with ``--no-verify``: never write an invalid model)."""
    try:
        onnx.checker.check_model(str(pruned) if not isinstance(pruned, onnx.ModelProto) else pruned)
    except (onnx.checker.ValidationError, ValueError, OSError) as exc:
        text = str(exc).strip().splitlines()
        raise VerificationError(f"{label} fails onnx.checker: {text[0][:200] if text else type(exc).__name__}") from None


def check_pruned(pruned, expected: dict[str, list], batch: int = 2) -> dict:
    """Checker + onnxruntime run of the pruned model against the dense model's declared output shapes.

    *expected* maps output names to the original's shapes (ints where static,
    anything else where dynamic).  Cheaper than running both models: large
    models would need a second session of the dense weights.  *pruned* is a
    ModelProto or the path of a written model (read from disk by onnxruntime).
    """
    check_checker(pruned)
    providers = default_providers()
    lean = not isinstance(pruned, onnx.ModelProto) and size_on_disk(pruned) > LEAN_SESSION_BYTES
    try:
        sess = session(pruned, providers, lean=lean)
        names = tensor_outputs(sess)
        outputs = sess.run(names, random_inputs(sess, batch=batch))
    except Exception as exc:  # noqa: BLE001
        raise VerificationError(f"pruned model does not run in onnxruntime: {first_line(exc, 240)}") from None
    for name, value in zip(names, outputs):
        want = expected.get(name)
        if want is None:
            raise VerificationError(f"output {name} is not an output of the original model")
        got = list(np.shape(value))
        if len(got) != len(want) or any(isinstance(w, int) and w != g for w, g in zip(want, got)):
            raise VerificationError(f"output {name} changed shape {want} -> {got}")
    return {"provider": providers[0], "outputs": len(outputs)}


def check_runs(original, pruned, batch: int = 2) -> dict:
    """Like :func:`check_pruned`, with the expected output shapes measured by running *original*.

    Either may be a ModelProto or a model file; give files for external-data
    models, so onnxruntime resolves their data relative to the model.  Errors
    name the file they are about.
    """
    label_a, label_b = (_label(m, name) for m, name in ((original, "original model"), (pruned, "pruned model")))
    try:
        ref = session(original)
        names = tensor_outputs(ref)
        shapes = ref.run(names, random_inputs(ref, batch=batch))
    except Exception as exc:  # noqa: BLE001
        raise VerificationError(f"{label_a} does not run in onnxruntime: {first_line(exc)}") from None
    expected = {name: [int(d) for d in np.shape(value)] for name, value in zip(names, shapes)}
    try:
        return check_pruned(pruned, expected, batch)
    except VerificationError as exc:
        raise VerificationError(f"{label_b}: {exc}") from None


def _label(model, fallback: str) -> str:
    return fallback if isinstance(model, onnx.ModelProto) else str(model)


@dataclass
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int


def summarize(samples_ms: Sequence[float]) -> Timing:
    """Median and true 10th/90th percentiles (numpy's linear interpolation) over every sample."""
    values = np.asarray(samples_ms, dtype=np.float64)
    p10, median, p90 = np.percentile(values, [10, 50, 90])
    return Timing(float(median), float(p10), float(p90), int(values.size))


def time_session(sess, feeds, warmup: int = 5, runs: int = 30) -> list[float]:
    """Milliseconds of *runs* runs after *warmup* untimed ones (on CUDA: IOBinding, synced each run)."""
    from .latency.providers import runner, time_runs

    return time_runs(runner(sess, feeds), warmup, runs)


def bench_pair(a: onnx.ModelProto, b: onnx.ModelProto, batch: int = 1, warmup: int = 5, runs: int = 30,
               threads: int = 0, providers=None, dims: Optional[dict[str, int]] = None,
               spec=None) -> tuple[Timing, Timing, str]:
    """Latency of two models on the same provider and threads, interleaved rounds to share noise.

    *spec* (:class:`inputspec.InputSpecs`): the input dims both run at (else chosen, *batch* for batch dims).
    """
    from .inputspec import active

    providers = list(providers or default_providers())
    sa, sb = session(a, providers, threads), session(b, providers, threads)
    with active(spec):
        fa = random_inputs(sa, batch=None if spec else batch, dims=dims)
        fb = random_inputs(sb, batch=None if spec else batch, dims=dims)
    rounds = min(3, runs)
    ta, tb = [], []
    for k in range(rounds):  # exactly *runs* runs in all: the remainder goes to the first rounds
        count = runs // rounds + (k < runs % rounds)
        ta += time_session(sa, fa, warmup, count)
        tb += time_session(sb, fb, warmup, count)
    return summarize(ta), summarize(tb), providers[0]
