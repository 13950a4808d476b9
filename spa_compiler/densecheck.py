"""The dense model runs first: at the input spec, before any work, and verification compares with it.

Why: a pruned model can only be blamed for what the original could do.  An
input that onnxruntime cannot load, or cannot run at the given or chosen
dims, is a problem of the input (exit 2, naming the input file), found
before minutes of analysis and statistics; a detector that only runs at
multiples of 32 gets the next common size instead of 1x1.  The output
shapes measured here are what verification expects of the pruned model at
the same feeds, dim for dim.  The same session also records the dense
outputs on the fidelity measurement inputs when asked (``measure``): one dense
run feeds the checks, verification and the fidelity measurement.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from . import inputspec
from .errors import UsageError, VerificationError
from .inputspec import InputSpecs

# Above this size on disk the dense model is not run (a second session of multi-GB weights);
# the dims are chosen without it and verification checks the declared output shapes only.
DENSE_RUN_MAX_BYTES = 512 * 2**20
VERIFY_BATCH = 2  # a dynamic batch is also checked at this size (it must stay dynamic)


@dataclass
class DenseRun:
    """The spec the dense model ran at, its output shapes per batch size, and its measured outputs."""

    spec: InputSpecs
    outputs: dict[int, dict[str, list[int]]] = field(default_factory=dict)  # batch -> output -> shape
    skipped: Optional[str] = None  # why the dense model was not run
    measurement: Optional[object] = None  # fidelity.Measurement on the data-free measurement inputs
    measure_error: Optional[str] = None  # why they could not be measured

    def describe(self) -> dict:
        return {"input_shapes": self.spec.describe(), "chosen_by": self.spec.source,
                "dense_run": self.skipped or f"ran at batch {', '.join(map(str, self.outputs))}"}


def check_dense(model: onnx.ModelProto, source: Union[str, Path, onnx.ModelProto],
                given: Optional[Mapping[str, Sequence[int]]] = None) -> DenseRun:
    """Choose the input spec (given dims, else metadata/common sizes) and run the dense model at it.

    Raises :class:`UsageError` naming the input when onnxruntime cannot load
    it, or when it runs at none of the sizes tried (given dims: that one).
    """
    return dense_runner(model, source, given)(_facts(model))


def _facts(model: onnx.ModelProto) -> dict:
    """The inputs' kinds read from *model*'s graph (none when gs cannot import it: kinds by dtype)."""
    import onnx_graphsurgeon as gs

    from .inputfacts import input_facts

    try:
        return input_facts(gs.import_onnx(model))
    except Exception:  # noqa: BLE001
        return {}


def dense_runner(model: onnx.ModelProto, source: Union[str, Path, onnx.ModelProto],
                 given: Optional[Mapping[str, Sequence[int]]] = None, measure: Optional[tuple[int, str]] = None):
    """:func:`check_dense` as a function of the inputs' facts to call later, holding only what it needs of *model*.

    *measure* (seed, noise): also record the dense outputs on the fidelity
    measurement inputs (:func:`fidelity.measurement_inputs`) in the same session.
    """
    from .scoretaps import score_tensors

    metadata = {p.key: p.value for p in model.metadata_props}
    inputs = inputspec.declared_inputs(model)
    taps = score_tensors(model) if measure is not None else []
    return lambda facts=None: _check_dense(inputs, metadata, source, given, facts, measure, taps)


def _check_dense(inputs, metadata: dict, source, given, facts=None, measure=None, taps=()) -> DenseRun:
    from .runtime import session, size_on_disk, tensor_outputs

    where = "<in-memory model>" if isinstance(source, onnx.ModelProto) else str(source)
    first = inputspec.choose(inputs, given, metadata, where=where, facts=facts)
    if isinstance(source, onnx.ModelProto):
        if _has_external(source):
            return DenseRun(first, skipped="in-memory model with external data: not run")
        if _proto_bytes(source) > DENSE_RUN_MAX_BYTES:
            return DenseRun(first, skipped=f"model over {DENSE_RUN_MAX_BYTES >> 20} MiB: not run")
        runnable = source
    else:
        if size_on_disk(source) > DENSE_RUN_MAX_BYTES:
            return DenseRun(first, skipped=f"model over {DENSE_RUN_MAX_BYTES >> 20} MiB: not run")
        runnable = str(source)
    try:
        sess = session(runnable)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types
        raise UsageError(f"{where}: onnxruntime cannot load the input model ({_first_line(exc)})") from None
    names = tensor_outputs(sess)
    tries = 1 if given and first.source == "given" or not first.has_symbolic else inputspec.attempts(metadata)
    errors = []
    for attempt in range(tries):
        spec = first if attempt == 0 else inputspec.choose(inputs, given, metadata, attempt=attempt, where=where,
                                                           facts=facts)
        if attempt and spec.shapes() == first.shapes():
            continue
        try:
            shapes = _output_shapes(sess, names, spec)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"{spec.describe()}: {_first_line(exc)}")
            continue
        run = DenseRun(spec, {_batch(spec): shapes})
        if spec.has_batch:
            try:
                run.outputs[VERIFY_BATCH] = _output_shapes(sess, names, spec.with_batch(VERIFY_BATCH))
            except Exception:  # noqa: BLE001 - a model exported for one batch size: verified at that one
                pass
        if measure is not None:
            _measure(run, source, sess, names, taps, *measure)
        return run
    if not first.has_symbolic:
        raise UsageError(f"{where}: onnxruntime cannot run the input model ({errors[0].split(': ', 1)[-1]})")
    if first.source == "given":
        raise UsageError(f"{where}: the input model does not run at --input-shape {first.describe()} "
                         f"({errors[0].split(': ', 1)[-1]})")
    raise UsageError(f"{where}: the input model does not run at the input shapes tried ({'; '.join(errors[:3])}); "
                     "give them with --input-shape NAME:DIMS")


def _measure(run: DenseRun, source, sess, names: list[str], taps, seed: int, noise: str) -> None:
    """The dense outputs (and score *taps*) on the measurement inputs, at batch 8 where the batch is dynamic
    and batch 2 ran."""
    from . import fidelity

    batch = fidelity.BATCH if VERIFY_BATCH in run.outputs else None
    try:
        inputs = fidelity.measurement_inputs(run.spec, None, seed, noise, batch=batch)
        run.measurement = fidelity.record_with_taps(source, sess, names, taps, inputs)
    except Exception as exc:  # noqa: BLE001 - reported as a warning (an error under --max-error)
        run.measure_error = _first_line(exc)


def _batch(spec: InputSpecs) -> int:
    batches = [d for s in spec for d, r in zip(s.dims, s.roles) if r == inputspec.BATCH]
    return batches[0] if batches else 1


def _output_shapes(sess, names: list[str], spec: InputSpecs) -> dict[str, list[int]]:
    values = sess.run(names, spec.feeds(seed=0, noise="auto"))
    return {name: [int(d) for d in np.shape(value)] for name, value in zip(names, values)}


def _proto_bytes(model: onnx.ModelProto) -> int:
    try:
        return model.ByteSize()
    except Exception:  # noqa: BLE001 - protobuf raises on messages over 2 GiB
        return 2**31


def _has_external(model: onnx.ModelProto) -> bool:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return any(uses_external_data(t) for t in _get_all_tensors(model))


def _first_line(exc: BaseException) -> str:
    """onnxruntime's message without its status prefix and source locations, on one line."""
    text = str(exc).strip().splitlines()
    if not text:
        return type(exc).__name__
    line = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text[0])
    line = re.sub(r"\S*onnxruntime_src\S*:\d+ [^)]*\)\s*", "", line)
    return line[:240]


def declared_outputs(model: onnx.ModelProto) -> dict[str, list]:
    """Each tensor output's declared dims: ints where static, the name (or None) where dynamic."""
    out = {}
    for vi in model.graph.output:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
                            for d in vi.type.tensor_type.shape.dim]
    return out


def check_dynamic_kept(original: Mapping[str, list], pruned: onnx.ModelProto) -> None:
    """Output dims the original declares dynamic must not be declared static in the pruned model."""
    for name, dims in declared_outputs(pruned).items():
        want = original.get(name)
        if want is None or len(want) != len(dims):
            continue
        for axis, (w, d) in enumerate(zip(want, dims)):
            if not isinstance(w, int) and isinstance(d, int):
                raise VerificationError(f"output {name} lost its dynamic dim {axis} ({w or '?'} -> {d})")


def verify_like_dense(pruned, dense: DenseRun, declared: Mapping[str, list]) -> dict:
    """onnx.checker, then the pruned model at every spec the dense model ran at: same output shapes.

    *pruned* is a ModelProto or the path of a written model; *declared* the
    original's declared output dims (dynamic ones must stay dynamic).
    """
    from .runtime import LEAN_SESSION_BYTES, check_checker, default_providers, session, size_on_disk, tensor_outputs

    check_checker(pruned)
    proto = pruned if isinstance(pruned, onnx.ModelProto) else onnx.load(str(pruned), load_external_data=False)
    check_dynamic_kept(declared, proto)
    providers = default_providers()
    lean = not isinstance(pruned, onnx.ModelProto) and size_on_disk(pruned) > LEAN_SESSION_BYTES
    try:
        sess = session(pruned, providers, lean=lean)
        names = tensor_outputs(sess)
    except Exception as exc:  # noqa: BLE001
        raise VerificationError(f"pruned model does not load in onnxruntime: {_first_line(exc)}") from None
    for batch, expected in dense.outputs.items():
        spec = dense.spec.with_batch(batch) if dense.spec.has_batch else dense.spec
        try:
            got = _output_shapes(sess, names, spec)
        except Exception as exc:  # noqa: BLE001
            raise VerificationError(f"pruned model does not run at {spec.describe()}, where the original "
                                    f"runs: {_first_line(exc)}") from None
        for name, shape in got.items():
            if name not in expected:
                raise VerificationError(f"output {name} is not an output of the original model")
            if shape != expected[name]:
                raise VerificationError(f"output {name} changed shape at {spec.describe()}: "
                                        f"{expected[name]} -> {shape}")
    return {"provider": providers[0], "outputs": len(names), "input_shapes": dense.spec.describe(),
            "batches": list(dense.outputs)}


def bench_spec(model: onnx.ModelProto, source, input_shapes, batch: int) -> InputSpecs:
    """The dims ``spac bench`` runs both models at: given, else as ``spac prune`` chooses (*batch* for batch dims)."""
    given = inputspec.parse_input_shapes(input_shapes)
    spec = check_dense(model, source, given).spec
    return spec if given else spec.with_batch(batch)
