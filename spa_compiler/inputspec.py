"""The input spec: the one decision about every graph input's dims, dtype, kind and value range.

Why one module: shape inference, the cost model, the OBSPA statistics runs and
verification all need concrete input dims where the model declares symbolic
ones (``batch``, ``height``, ``unk__3``).  Chosen separately, they disagree:
MACs counted at 1x1, a detector fed a size it cannot run, statistics taken at
a size verification never sees.  Here the dims are given once
(``--input-shape images:1x3x320x320``, the trtexec/polygraphy convention) or
chosen once, and every stage asks this spec for shapes and feeds: the dense
run, verification, the fidelity measurement and ``--max-error`` probes, and the
OBSPA statistics all draw their data-free inputs from :meth:`InputSpecs.feeds`,
whose values follow each input's kind read from the graph (:mod:`.inputfacts`:
ids within the table they index, padded masks; :mod:`.inputvalues`: 1/f² noise
for images and spectrograms).

Without given dims: batch dims get 1; spatial dims of an image input the
model's ``imgsz`` metadata (ultralytics), else 224 (then 320, 640 when the
dense model refuses a size: see :mod:`spa_compiler.densecheck`), never 1;
sequence-like dims a modest length (16).  A symbolic name shared by several
inputs gets one value.
"""
from __future__ import annotations

import contextvars
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np

from . import inputvalues
from .errors import UsageError
from .inputfacts import FLOAT, InputFacts, default_kind

Dim = Union[int, str, None]

BATCH = "batch"
SPATIAL = "spatial"
SEQUENCE = "sequence"

# Tried in order when the dense model refuses a chosen size (multiples of 32: detectors' strides).
SPATIAL_SIZES = (224, 320, 640)
SEQUENCE_LENGTHS = (16, 32, 64)
DEFAULT_BATCH = 1
# Integer inputs (token ids, class indices) get values in [0, INT_HIGH): valid for any embedding table.
INT_HIGH = 8

_BATCH_NAMES = re.compile(r"^(n|b|bs|batch|batch_?size|batches|num_?batch(es)?)$", re.IGNORECASE)
_SPATIAL_NAMES = re.compile(r"(height|width|^h$|^w$|^img_?[hw]$|^image_?(height|width)$)", re.IGNORECASE)
_SEQUENCE_NAMES = re.compile(r"(seq|len|time|token|frame|step|past|total)", re.IGNORECASE)

_NP_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class InputSpec:
    """One graph input: its declared dims, the concrete dims chosen for it, dtype, kind and value range."""

    name: str
    declared: tuple[Dim, ...]
    dims: tuple[int, ...]
    dtype: np.dtype
    roles: tuple[Optional[str], ...]  # per axis: BATCH, SPATIAL, SEQUENCE for symbolic dims, None for static
    high: int = INT_HIGH
    kind: str = FLOAT  # inputfacts kind: ids, mask, int, bool, float
    weights: Optional[tuple[float, ...]] = None  # ids: probability of each value in [0, high)

    def feed(self, rng: np.random.Generator, noise: str = "white") -> np.ndarray:
        """Seeded values at the chosen dims, drawn for the input's kind (:func:`inputvalues.draw`)."""
        return inputvalues.draw(self.kind, self.dims, self.dtype, self.high, rng, noise, self.weights)

    def with_facts(self, facts: Optional[InputFacts]) -> "InputSpec":
        """This input with the kind (and ids' table size) the graph shows."""
        if facts is None:
            return self
        return replace(self, kind=facts.kind, high=facts.high or INT_HIGH, weights=facts.weights)


@dataclass(frozen=True)
class InputSpecs:
    """Every graph input's spec, and how the dims were decided (``given``, ``metadata imgsz``, ``chosen``)."""

    inputs: tuple[InputSpec, ...]
    source: str = "chosen"

    def __iter__(self) -> Iterator[InputSpec]:
        return iter(self.inputs)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {spec.name: spec.dims for spec in self.inputs}

    def describe(self) -> str:
        """``name:1x3x224x224,other:1x16``, the form ``--input-shape`` takes."""
        return ",".join(f"{s.name}:{'x'.join(map(str, s.dims))}" for s in self.inputs)

    @property
    def has_symbolic(self) -> bool:
        return any(role is not None for spec in self.inputs for role in spec.roles)

    @property
    def has_batch(self) -> bool:
        return any(role == BATCH for spec in self.inputs for role in spec.roles)

    def with_batch(self, batch: int) -> "InputSpecs":
        """The same spec with every symbolic batch dim set to *batch* (static dims stay as declared)."""
        return InputSpecs(tuple(replace(s, dims=tuple(batch if role == BATCH else d for d, role in zip(s.dims, s.roles)))
                                for s in self.inputs), self.source)

    def varied(self) -> "InputSpecs":
        """Every symbolic dim multiplied by its own prime (2, 3, 5... per symbol): which dims follow which input.

        Distinct factors keep ``H`` and ``W`` apart even when both are 224;
        multiples keep sizes a detector accepts (multiples of its stride); primes
        let a merged dim (``batch*seq``) be read back as a product.
        """
        factors = self.factors()
        return InputSpecs(tuple(replace(s, dims=tuple(
            d if role is None else d * factors[_symbol_key(s, axis)]
            for axis, (d, role) in enumerate(zip(s.dims, s.roles)))) for s in self.inputs), self.source)

    def factors(self) -> dict:
        """A distinct prime per symbol, for :meth:`varied`.

        Symbols are dim names (unnamed dims: input and axis), except that every
        batch dim is one symbol: tf2onnx names each input's batch afresh
        (``unk__330``, ``unk__331``) though the model needs them equal.
        """
        factors: dict = {}
        for s in self.inputs:
            for axis, role in enumerate(s.roles):
                if role is not None:
                    factors.setdefault(_symbol_key(s, axis), _PRIMES[min(len(factors), len(_PRIMES) - 1)])
        return factors

    def symbols(self) -> dict[str, tuple[int, int]]:
        """Each symbolic input dim's name: (its value in this spec, its prime in :meth:`varied`).

        An unnamed dim is called ``<input>_d<axis>``, as onnxruntime's symbolic inference calls it.
        """
        factors = self.factors()
        return {d if isinstance(d, str) and d else f"{s.name}_d{axis}": (value, factors[_symbol_key(s, axis)])
                for s in self.inputs for axis, (d, value, role) in enumerate(zip(s.declared, s.dims, s.roles))
                if role is not None}

    def feeds(self, seed: int = 0, batch: Optional[int] = None, noise: str = "white") -> dict[str, np.ndarray]:
        """Seeded feeds at the spec's dims (*batch*: symbolic batch dims set to it), values by input kind.

        *noise* ``auto`` gives images and spectrograms 1/f² noise (what the
        compiler's stages feed), ``white`` N(0,1) floats (oracle checks).
        """
        spec = self if batch is None else self.with_batch(batch)
        rng = np.random.default_rng(seed)
        return {s.name: s.feed(rng, noise) for s in spec.inputs}

    def with_facts(self, facts: Mapping[str, InputFacts]) -> "InputSpecs":
        """The same dims with each input's kind read from the graph (:func:`inputfacts.input_facts`)."""
        return InputSpecs(tuple(s.with_facts(facts.get(s.name)) for s in self.inputs), self.source)

    def facts(self) -> dict[str, InputFacts]:
        """Each input's kind and ids' bound, to carry over to a spec chosen again (another session)."""
        return {s.name: InputFacts(s.kind, s.high, s.weights) for s in self.inputs}

    def samples_per_run(self, samples: int) -> tuple["InputSpecs", int]:
        """A spec holding *samples* samples in one run where it can, and how many it holds.

        A symbolic batch takes them all; a model without one (exported at
        batch 1) gets one sequence *samples* times longer when it has a
        sequence dim (one long sentence instead of many short ones: the same
        positions for a convolution or a recurrence), else one sample per run.
        """
        if self.has_batch:
            return self.with_batch(samples), samples
        grown = next(((_symbol_key(s, axis)) for s in self.inputs for axis, role in enumerate(s.roles)
                      if role == SEQUENCE), None)
        if grown is None or samples <= 1:
            return self, 1
        return InputSpecs(tuple(replace(s, dims=tuple(
            d * samples if role == SEQUENCE and _symbol_key(s, axis) == grown else d
            for axis, (d, role) in enumerate(zip(s.dims, s.roles)))) for s in self.inputs), self.source), samples

    def statistics_batch(self, default: int = 64) -> int:
        """Samples per statistics run: *default* at 224x224 or less, fewer for larger images (same memory)."""
        area = max((int(np.prod([d for d, r in zip(s.dims, s.roles) if r == SPATIAL] or [1])) for s in self.inputs),
                   default=1)
        return max(2, min(default, default * 224 * 224 // max(area, 1)))


_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47)


def _symbol_key(spec: InputSpec, axis: int):
    if spec.roles[axis] == BATCH:
        return BATCH
    decl = spec.declared[axis]
    return decl if isinstance(decl, str) and decl else (spec.name, axis)


def _static(dim: Dim) -> bool:
    """A dim the model fixes (Paddle writes -1 and some exporters 0 for a dynamic one)."""
    return isinstance(dim, (int, np.integer)) and dim > 0


def parse_input_shapes(values: Union[None, str, Sequence[str], Mapping[str, Sequence[int]]]) -> dict[str, tuple[int, ...]]:
    """``["images:1x3x320x320"]`` (CLI, repeatable; commas also separate entries) or a dict (API) -> dims.

    The name is everything before the last colon (TensorFlow names such as
    ``input:0`` keep theirs); dims are separated by ``x`` (or ``,`` in a dict's
    string value).
    """
    if not values:
        return {}
    if isinstance(values, Mapping):
        out = {}
        for name, dims in values.items():
            if isinstance(dims, str):
                dims = _split_dims(str(name), dims)
            out[str(name)] = _check_dims(str(name), dims)
        return out
    if isinstance(values, str):
        values = [values]
    out: dict[str, tuple[int, ...]] = {}
    for value in values:
        for entry in _split_entries(value):
            name, sep, dims = entry.rpartition(":")
            if not sep or not name:
                raise UsageError(f"--input-shape {entry!r}: expected NAME:DIMS such as images:1x3x320x320")
            if name in out:
                raise UsageError(f"--input-shape: input {name!r} given twice")
            out[name] = _check_dims(name, _split_dims(name, dims))
    return out


def _split_entries(value: str) -> list[str]:
    """``a:1x3,b:1x16`` -> two entries (a comma followed by a dim is part of the dims)."""
    entries: list[str] = []
    for piece in value.split(","):
        if entries and re.fullmatch(r"\s*\d+(x\d+)*\s*", piece):
            entries[-1] += "x" + piece.strip()
        elif piece.strip():
            entries.append(piece.strip())
    return entries


def _split_dims(name: str, text: str) -> list[int]:
    try:
        return [int(d) for d in re.split(r"[x,*]", text.strip().lower()) if d != ""]
    except ValueError:
        raise UsageError(f"--input-shape {name}:{text}: dims must be integers separated by x") from None


def _check_dims(name: str, dims) -> tuple[int, ...]:
    try:
        out = tuple(int(d) for d in dims)
    except (TypeError, ValueError):
        raise UsageError(f"--input-shape {name}: dims must be integers, got {dims!r}") from None
    if any(d < 1 for d in out):
        raise UsageError(f"--input-shape {name}:{'x'.join(map(str, out))}: every dim must be >= 1")
    return out


def declared_inputs(model) -> list[tuple[str, tuple[Dim, ...], np.dtype]]:
    """(name, declared dims, numpy dtype) of a ModelProto's or session's real inputs (no initializers)."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        inits = {i.name for i in model.graph.initializer}
        out = []
        for vi in model.graph.input:
            if vi.name in inits or not vi.type.HasField("tensor_type"):
                continue
            dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                         for d in vi.type.tensor_type.shape.dim)
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)) \
                if vi.type.tensor_type.elem_type else np.dtype(np.float32)
            out.append((vi.name, dims, dtype))
        return out
    return [(arg.name, tuple(d if isinstance(d, int) or d is None else str(d) for d in (arg.shape or [])),
             np.dtype(_NP_TYPES.get(arg.type, np.float32))) for arg in model.get_inputs()]


def image_size(metadata: Mapping[str, str]) -> Optional[tuple[int, int]]:
    """(height, width) from an ``imgsz`` metadata entry (``640``, ``[640, 640]``, ``640,480``), else None."""
    for key in ("imgsz", "img_size", "image_size", "input_size"):
        text = metadata.get(key)
        if not text:
            continue
        try:
            value = json.loads(text) if text.strip().startswith("[") else [int(v) for v in re.split(r"[x, ]+", text.strip())]
        except (ValueError, TypeError):
            continue
        value = [int(v) for v in (value if isinstance(value, list) else [value])]
        if len(value) == 1:
            value = value * 2
        if len(value) == 2 and all(v > 0 for v in value):
            return value[0], value[1]
    return None


def _image_layout(dims: tuple[Dim, ...], dtype: np.dtype) -> Optional[tuple[int, int]]:
    """The (H, W) axes of an image-like input (float, rank 4): NHWC when channels sit last, else NCHW."""
    if len(dims) != 4 or not np.issubdtype(dtype, np.floating):
        return None
    channels_last = isinstance(dims[3], int) and dims[3] in (1, 2, 3, 4) and not (
        isinstance(dims[1], int) and dims[1] in (1, 2, 3, 4))
    return (1, 2) if channels_last else (2, 3)


def _role(name: Dim, axis: int, dims: tuple[Dim, ...], dtype: np.dtype) -> str:
    label = name if isinstance(name, str) else ""
    if label and _BATCH_NAMES.match(label):
        return BATCH
    if label and _SPATIAL_NAMES.search(label):
        return SPATIAL
    if label and _SEQUENCE_NAMES.search(label) and not label.startswith("unk__"):
        return SEQUENCE
    layout = _image_layout(dims, dtype)
    if layout and axis in layout:
        return SPATIAL
    if axis == 0:
        return BATCH
    return SEQUENCE


def choose(inputs: Sequence[tuple[str, tuple[Dim, ...], np.dtype]], given: Optional[Mapping[str, Sequence[int]]] = None,
           metadata: Optional[Mapping[str, str]] = None, attempt: int = 0, where: str = "",
           facts: Optional[Mapping[str, InputFacts]] = None) -> InputSpecs:
    """The spec of *inputs*: *given* dims where named, else chosen (*attempt* picks the n-th fallback size).

    Given dims must name real inputs, have the declared rank and agree with
    every static dim (one clear error otherwise).  *facts*
    (:func:`inputfacts.input_facts`) give each input's kind; without them an
    input's kind follows its dtype.
    """
    given = dict(given or {})
    names = [name for name, _, _ in inputs]
    unknown = sorted(set(given) - set(names))
    prefix = f"{where}: " if where else ""
    if unknown:
        raise UsageError(f"{prefix}--input-shape names {', '.join(unknown)}, not an input of the model "
                         f"(inputs: {', '.join(names) or 'none'})")
    imgsz = image_size(metadata or {})
    shared: dict[str, int] = {}
    for name, dims, _ in inputs:  # given values fix shared symbolic names for the other inputs too
        if name in given:
            want = given[name]
            if len(want) != len(dims):
                raise UsageError(f"{prefix}--input-shape {name}: {len(want)} dims given, the model declares "
                                 f"rank {len(dims)} {list(dims)}")
            for axis, (d, w) in enumerate(zip(dims, want)):
                if _static(d) and d != w:
                    raise UsageError(f"{prefix}--input-shape {name}: dim {axis} is {w}, the model declares {d}")
                if isinstance(d, str):
                    shared.setdefault(d, w)
    # a name some input has as its batch is the batch wherever it appears (states [layers, batch, hidden])
    batch_names = {dims[0] for _, dims, dtype in inputs if dims and isinstance(dims[0], str) and dims[0]
                   and _role(dims[0], 0, dims, dtype) == BATCH}
    specs = []
    for name, dims, dtype in inputs:
        roles = tuple(None if _static(d) else BATCH if d in batch_names else _role(d, axis, dims, dtype)
                      for axis, d in enumerate(dims))
        layout = _image_layout(dims, dtype)
        chosen = []
        for axis, (d, role) in enumerate(zip(dims, roles)):
            if name in given:
                chosen.append(int(given[name][axis]))
            elif role is None:
                chosen.append(int(d))
            elif isinstance(d, str) and d in shared:
                chosen.append(shared[d])
            else:
                value = _default(role, axis, layout, imgsz, attempt)
                if isinstance(d, str):
                    shared[d] = value
                chosen.append(value)
        spec = InputSpec(name, tuple(dims), tuple(chosen), np.dtype(dtype), roles, kind=default_kind(dtype))
        specs.append(spec.with_facts((facts or {}).get(name)))
    source = "given" if given and set(given) == set(names) else (
        "metadata imgsz" if imgsz and attempt == 0 and any(SPATIAL in s.roles for s in specs) else "chosen")
    return InputSpecs(tuple(specs), source)


def _default(role: str, axis: int, layout, imgsz, attempt: int) -> int:
    if role == BATCH:
        return DEFAULT_BATCH
    if role == SPATIAL:
        sizes = ([imgsz[0 if layout is None or axis == layout[0] else 1]] if imgsz else []) + \
            [s for s in SPATIAL_SIZES if not imgsz or s not in imgsz]
        return sizes[min(attempt, len(sizes) - 1)]
    return SEQUENCE_LENGTHS[min(attempt, len(SEQUENCE_LENGTHS) - 1)]


def attempts(metadata: Optional[Mapping[str, str]] = None) -> int:
    """How many fallback sizes :func:`choose` has for chosen (not given) dims."""
    return len(SPATIAL_SIZES) + (1 if image_size(metadata or {}) else 0)


# The spec of the model being compiled, for the normalization passes (whose signature is (graph, notes)).
_ACTIVE: contextvars.ContextVar[Optional[InputSpecs]] = contextvars.ContextVar("spa_input_spec", default=None)


@contextmanager
def active(spec: Optional[InputSpecs]) -> Iterator[None]:
    """Make *spec* the input spec that shape inference uses inside the block."""
    token = _ACTIVE.set(spec)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def current() -> Optional[InputSpecs]:
    return _ACTIVE.get()


def for_session(sess, batch: Optional[int] = None, dims: Optional[Mapping[str, int]] = None) -> InputSpecs:
    """The spec of an onnxruntime session's inputs: the active spec's dims where it names them, else chosen.

    *dims* sets symbolic dims by name (``{"seq": 7}``); *batch* sets batch dims.
    """
    inputs = declared_inputs(sess)
    spec = current()
    known = {s.name: s for s in spec} if spec is not None else {}
    given = {name: known[name].dims for name, decl, _ in inputs if name in known and len(known[name].dims) == len(decl)}
    chosen = choose(inputs, given, facts=spec.facts() if spec is not None else None)
    if dims:
        chosen = InputSpecs(tuple(replace(s, dims=tuple(dims.get(d, v) if isinstance(d, str) else v
                                                         for d, v in zip(s.declared, s.dims))) for s in chosen),
                            chosen.source)
    return chosen if batch is None else chosen.with_batch(batch)


def for_model(model, given: Optional[Mapping[str, Sequence[int]]] = None) -> InputSpecs:
    """The spec of a model file or ModelProto with its inputs' kinds read from its graph.

    For callers outside the compiler's stages (which get theirs from
    normalization): the same dims and values a prune run would feed.
    """
    import onnx
    import onnx_graphsurgeon as gs

    from .inputfacts import input_facts

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    try:
        facts = input_facts(gs.import_onnx(proto))
    except Exception:  # noqa: BLE001 - a graph gs cannot import: kinds by dtype
        facts = {}
    return choose(declared_inputs(proto), given, {p.key: p.value for p in proto.metadata_props}, facts=facts)
