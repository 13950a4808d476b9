"""Output fidelity: how far the pruned model's outputs moved from the dense model's.

A pruned model that runs and keeps its output shapes can still compute
nonsense (a CTC reader at cosine 0.2, NaN from an ill-conditioned solve), so
every prune run measures the pruned model against the dense one on the same
*measurement inputs*: the calibration inputs when given, else a small seeded
set of the data-free inputs every stage draws from the input spec
(:meth:`inputspec.InputSpecs.feeds`).
Per float output it reports the relative L2 error ``||y - y0|| / ||y0||``
over all samples, the mean per-sample cosine (of all samples as one vector
where a sample is one number), and where an output looks like
class scores (rank 2 or 3, last axis > 1) the top-1 agreement along the last
axis (per position for sequence taggers); per integer output (class ids computed in the graph) the fraction
of entries that changed, which the error :func:`relative_error` takes into account, and the float scores
those ids are computed from (``ArgMax``/``TopK`` inputs, :mod:`scoretaps`) as if they were outputs.  The dense outputs are computed
once and kept (small: a few batches); sessions open model files directly so
large weights stay out of Python, and only one session is alive at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import onnx

from .errors import UsageError, VerificationError
from .runtime import LEAN_SESSION_BYTES, session, size_on_disk, tensor_outputs

MEASURE_SAMPLES = 16  # data-free measurement samples (seeded like the statistics)
CALIB_SAMPLES = 64    # at most this many calibration samples are measured
BATCH = 8
COLLAPSE_COSINE = 0.9
COLLAPSE_ERROR = 0.5


@dataclass
class MeasurementInputs:
    """Feed batches every measurement uses, and where they came from (for the report)."""

    batches: list[dict[str, np.ndarray]]
    source: str
    samples: int


def open_session(model):
    """A CPU/GPU session of a ModelProto or a file (lean for large files, as verification does)."""
    lean = not isinstance(model, onnx.ModelProto) and size_on_disk(model) > LEAN_SESSION_BYTES
    return session(model, lean=lean)


def measurement_inputs(spec, calib: Optional[dict[str, np.ndarray]] = None, seed: int = 0, noise: str = "auto",
                       samples: int = MEASURE_SAMPLES, batch: Optional[int] = BATCH) -> MeasurementInputs:
    """The calibration inputs (first CALIB_SAMPLES) or *samples* seeded data-free inputs, in batches.

    Data-free inputs come from the input spec (:meth:`inputspec.InputSpecs.feeds`: its dims, ids within
    the table they index, padded masks, 1/f² images), as every other stage draws them; *batch* samples
    per run where the batch is symbolic (None: the spec's own), else the model's fixed batch.
    """
    fixed = None if spec.has_batch else _leading(spec)
    size = batch if spec.has_batch and batch else _leading(spec)
    if calib is not None:
        total = min(CALIB_SAMPLES, len(next(iter(calib.values()))))
        total -= total % fixed if fixed else 0  # a fixed batch dimension takes only whole batches
        if total:
            batches = [{name: calib[name][start:start + size] for name in calib} for start in range(0, total, size)]
            return MeasurementInputs(batches, f"calib ({total} samples)", total)
    batches: list[dict[str, np.ndarray]] = []
    done = 0 if spec.inputs else samples  # a model without inputs: one run
    if not spec.inputs:
        batches.append({})
    while done < samples:
        n = min(size, samples - done) if spec.has_batch else size
        batches.append(spec.feeds(seed=seed + done, batch=n if spec.has_batch else None, noise=noise))
        done += max(1, n)
    return MeasurementInputs(batches, f"data-free {noise} noise ({done} samples, seed {seed})", done)


def _leading(spec) -> int:
    """Samples in one feed at the spec's own dims: the first input's leading dim (1 for scalars)."""
    first = next(iter(spec), None)
    return int(first.dims[0]) if first is not None and first.dims else 1


@dataclass
class Reference:
    """The dense model's tensor outputs (and score taps, :mod:`scoretaps`) on the measurement inputs, per batch."""

    names: list[str]
    outputs: list[list[np.ndarray]]

    def only(self, names: Sequence[str]) -> "Reference":
        """The same reference restricted to *names* (a pruned model that lost a tap is measured on the rest)."""
        if list(names) == self.names:
            return self
        keep = [self.names.index(n) for n in names]
        return Reference(list(names), [[batch[i] for i in keep] for batch in self.outputs])


def session_measuring(model, names: Sequence[str]):
    """A session of *model* that outputs *names* (score taps exposed), and which of them it outputs."""
    from .scoretaps import exposing

    if not isinstance(model, onnx.ModelProto):  # a file is only loaded into Python when a tap needs exposing
        sess = open_session(model)
        if set(names) <= set(tensor_outputs(sess)):
            return sess, list(names)
    exposed, available = exposing(model, names, LEAN_SESSION_BYTES)
    return open_session(exposed), available


def score_taps(model) -> list[str]:
    """The float scores behind *model*'s integer outputs (:func:`scoretaps.score_tensors`; reads no weights)."""
    from .scoretaps import score_tensors

    return score_tensors(model if isinstance(model, onnx.ModelProto) else
                         onnx.load(str(model), load_external_data=False))


def record_with_taps(model, sess, names: Sequence[str], taps: Sequence[str], inputs: "MeasurementInputs"):
    """:func:`record` of *names* and the score *taps* (a second session exposes them; *sess* when none)."""
    extra = [t for t in taps if t not in names]
    if extra:
        sess, names = session_measuring(model, list(names) + extra)
    return record(sess, names, inputs)


def run_batches(sess, names: Sequence[str], batches: Iterable[dict[str, np.ndarray]]) -> Iterator[list[np.ndarray]]:
    inputs = {arg.name for arg in sess.get_inputs()}
    for feeds in batches:
        yield sess.run(list(names), {k: v for k, v in feeds.items() if k in inputs})


@dataclass
class Measurement:
    """The measurement inputs with the dense model's outputs on them: what every fidelity check compares to."""

    inputs: MeasurementInputs
    reference: Reference


def record(sess, names: Sequence[str], inputs: MeasurementInputs) -> Measurement:
    """The dense session's *names* outputs on *inputs*: the reference every later measurement compares with."""
    return Measurement(inputs, Reference(list(names), list(run_batches(sess, names, inputs.batches))))


def measure_dense(model, calib: Optional[dict[str, np.ndarray]] = None, seed: int = 0,
                  noise: str = "auto", spec=None) -> Measurement:
    """Make the measurement inputs from the dense *model*'s input spec and record its outputs (one session).

    *spec*: the compiled model's input spec (else chosen for *model* as a prune run would).
    """
    from .inputspec import for_model

    spec = spec if spec is not None else for_model(model)
    sess = open_session(model)
    return record_with_taps(model, sess, tensor_outputs(sess), score_taps(model),
                            measurement_inputs(spec, calib, seed, noise))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def try_measure_dense(model, calib, seed: int, noise: str, required: bool, spec=None,
                      dense=None) -> tuple[Optional[Measurement], list[str]]:
    """:func:`measure_dense`, or no measurement and a warning when onnxruntime cannot run the dense model.

    *dense* (:class:`densecheck.DenseRun`): its recorded measurement is used when there is no *calib*
    (the dense model is not run again).  The compiler accepts models onnxruntime refuses (an IR version
    from the future, an op it lacks); fidelity is then not measured, said in one warning.  *required*
    (``--max-error``) makes it an error.
    """
    try:
        if calib is None and dense is not None and dense.measurement is not None:
            return dense.measurement, []
        if calib is None and dense is not None and dense.measure_error:
            raise RuntimeError(dense.measure_error)
        return measure_dense(model, calib, seed, noise, spec), []
    except Exception as exc:  # noqa: BLE001 - any runtime refusal of the input model
        if required:
            raise UsageError(f"--max-error needs the dense model to run in onnxruntime: {_first_line(exc)}") from None
        return None, [f"fidelity not measured: onnxruntime cannot run the dense model ({_first_line(exc)})"]


def looks_like_scores(value: np.ndarray) -> bool:
    """Class scores or per-position tags: (batch, classes) or (batch, positions, classes)."""
    return np.issubdtype(value.dtype, np.floating) and value.ndim in (2, 3) and value.shape[-1] > 1


@dataclass
class _Accumulator:
    """Streaming sums of one output's error, cosine and argmax agreement over the batches."""

    diff_sq: float = 0.0
    ref_sq: float = 0.0
    dot: float = 0.0
    got_sq: float = 0.0
    cosines: float = 0.0
    rows: int = 0
    agree: int = 0
    positions: int = 0
    scores: bool = False
    floating: bool = True
    finite: bool = True

    def add(self, ref: np.ndarray, got: np.ndarray) -> None:
        self.floating = np.issubdtype(ref.dtype, np.floating)
        if not self.floating:  # a different shape (a variable-length output) counts as every entry changed
            self.agree += int(np.sum(ref == got)) if ref.shape == got.shape else 0
            self.positions += int(ref.size)
            return
        a, b = ref.astype(np.float64), got.astype(np.float64)
        if a.shape != b.shape:  # a tap whose shape pruning changed: nothing of it is kept
            b = np.zeros_like(a)
        self.finite &= bool(np.isfinite(b).all())
        b = np.nan_to_num(b, nan=0.0, posinf=0.0, neginf=0.0)
        self.diff_sq += float(np.sum((a - b) ** 2))
        self.ref_sq += float(np.sum(a ** 2))
        self.dot += float(np.sum(a * b))
        self.got_sq += float(np.sum(b ** 2))
        if a.ndim >= 2 and a[0].size > 1:  # per-sample cosines; a sample of one number has no direction
            rows_a, rows_b = a.reshape(len(a), -1), b.reshape(len(b), -1)
            norm_a, norm_b = np.linalg.norm(rows_a, axis=1), np.linalg.norm(rows_b, axis=1)
            cos = np.where((norm_a == 0) & (norm_b == 0), 1.0,
                           np.sum(rows_a * rows_b, axis=1) / np.maximum(norm_a * norm_b, 1e-300))
            self.cosines += float(np.sum(cos))
            self.rows += len(cos)
        if looks_like_scores(ref):
            self.scores = True
            self.agree += int(np.sum(np.argmax(a, axis=-1) == np.argmax(b, axis=-1)))
            self.positions += int(np.prod(a.shape[:-1]))

    def _overall_cosine(self) -> float:
        """Cosine of all samples as one vector: for outputs of one number per sample (a score, a tag)."""
        if self.ref_sq == 0 and self.got_sq == 0:
            return 1.0
        return self.dot / max(float(np.sqrt(self.ref_sq * self.got_sq)), 1e-300)

    def result(self) -> dict:
        if not self.floating:
            return {"kind": "integer", "equal": self.agree / max(self.positions, 1)}
        error = float(np.sqrt(self.diff_sq / max(self.ref_sq, 1e-300))) if self.diff_sq else 0.0
        out = {"kind": "float", "rel_error": error if self.finite else None,  # None: JSON has no infinity
               "cosine": self.cosines / self.rows if self.rows else self._overall_cosine(),
               "finite": self.finite}
        if self.scores:
            out["top1"] = self.agree / max(self.positions, 1)
        return out


def compare(reference: Reference, outputs: Iterable[list[np.ndarray]]) -> dict:
    """Fidelity of *outputs* (per batch, in reference.names order) against the dense reference.

    The summary keys are the worst over float outputs: the largest relative
    error, the smallest cosine and top-1 agreement.
    """
    acc = {name: _Accumulator() for name in reference.names}
    for ref_batch, got_batch in zip(reference.outputs, outputs):
        for name, ref, got in zip(reference.names, ref_batch, got_batch):
            acc[name].add(np.asarray(ref), np.asarray(got))
    per_output = {name: a.result() for name, a in acc.items()}
    floats = [r for r in per_output.values() if r["kind"] == "float"]
    tops = [r["top1"] for r in floats if "top1" in r]
    integers = [1.0 - r["equal"] for r in per_output.values() if r["kind"] == "integer"]
    return {"outputs": per_output,
            "rel_error": None if any(r["rel_error"] is None for r in floats) else
            max((r["rel_error"] for r in floats), default=0.0),
            "cosine": min((r["cosine"] for r in floats), default=1.0),
            "top1": min(tops) if tops else None,
            "mismatch": max(integers) if integers else None,
            "finite": all(r["finite"] for r in floats)}


def measure(pruned, measurement: Measurement) -> dict:
    """Fidelity of the *pruned* model (path or ModelProto) on the measurement inputs."""
    try:
        sess, names = session_measuring(pruned, measurement.reference.names)
        reference = measurement.reference.only(names)
        result = compare(reference, run_batches(sess, names, measurement.inputs.batches))
    except Exception as exc:  # noqa: BLE001 - reached with --no-verify only: the check runs it first
        raise VerificationError(f"pruned model does not run in onnxruntime: {_first_line(exc)}") from None
    result["inputs"] = measurement.inputs.source
    return result


def relative_error(fidelity: dict) -> float:
    """The number ``--max-error`` bounds: the worst float output's relative L2 error (inf if non-finite), or
    the largest fraction of changed entries of an integer output (class ids a model computes itself: a
    tagger whose only output is ``ArgMax`` of its scores) when that is larger."""
    if fidelity["rel_error"] is None:
        return float("inf")
    return max(fidelity["rel_error"], fidelity.get("mismatch") or 0.0)


def collapse_warning(fidelity: dict) -> Optional[str]:
    """One plain line when the pruned model no longer computes what the dense one did, else None."""
    error, cosine = relative_error(fidelity), fidelity["cosine"]
    if fidelity["finite"] and cosine >= COLLAPSE_COSINE and error <= COLLAPSE_ERROR:
        return None
    what = "non-finite outputs" if not fidelity["finite"] else \
        f"output cosine {cosine:.3f}, relative error {error:.3f}"
    return (f"fidelity collapsed ({what} on {fidelity.get('inputs', 'the measurement inputs')}): "
            "try a smaller --ratio/--target-macs, --calib with real inputs, or --max-error 0.05")


def summary_line(fidelity: dict) -> str:
    """The summary's fidelity line: worst error and cosine, and top-1 agreement where outputs are scores."""
    line = f"fidelity: rel. error {relative_error(fidelity):.4f}, cosine {fidelity['cosine']:.4f}"
    if fidelity.get("top1") is not None:
        line += f", top-1 agreement {fidelity['top1']:.1%}"
    return line + f" ({fidelity.get('inputs', '')})"
