"""Latency tables: per provider and machine, cached on disk, fitted monotone, cheap to query.

A table holds, for each layer signature (:mod:`.layers`), two measured
curves: milliseconds against the output width (input width full) and
against the input width (output width full); a depthwise conv has one.  A
layer at widths (i, o) is predicted as ``out(o) * in(i) / full``, each curve
fitted non-decreasing (isotonic, pool-adjacent-violators) over its widths and
interpolated linearly between them.

Which widths are measured comes from a *granularity probe* per op kind: a
reference op timed at every width from 33 to 64.  Where a provider's kernels
want multiples (onnxruntime CPU's blocked convs, GEMM tiles), widths off a
multiple run as slowly as the next multiple or slower; the *step* is the
finest power of two whose multiples are all fast, widened while rounding up
to a coarser one costs nothing (:func:`staircase_step`).  Layers are measured, and planned, on multiples of their kind's
step: the latency staircase's treads.

The cache is one JSON file per provider and machine,
``~/.cache/spa-compiler/latency/<provider>-<machine>.json`` (the folder is
``$SPAC_LATENCY_CACHE`` when set); a machine is its CPU model, core count,
onnxruntime version and thread count.  Nothing is timed twice.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .layers import CONV, CONV1D, CONV_1X1, DEPTHWISE, KINDS, MATMUL, Layer
from .measure import Timer

CACHE_ENV = "SPAC_LATENCY_CACHE"
POINTS = 9  # widths measured per curve, besides the full width
MIN_KEPT = 0.1  # the smallest kept fraction a curve covers (max group ratio 0.9)
STEPS = (32, 16, 8, 4, 2, 1)
STEP_TOLERANCE = 0.04  # rounding up to the step may cost at most this much (noise)
PROBE_WIDTHS = tuple(range(33, 65))
# reference ops of the granularity probe: kind -> (c_in, c_out, fixed dims); the probed width replaces c_out
PROBES = {
    CONV_1X1: (64, 64, (1, 56, 56, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1)),
    CONV: (64, 64, (1, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1)),
    DEPTHWISE: (64, 64, (1, 56, 56, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1)),
    MATMUL: (256, 64, (256,)),
    CONV1D: (64, 64, (1, 128, 3, 1, 1, 1, 1)),
}


def machine_key(threads: int = 0) -> str:
    """CPU model, cores, onnxruntime version and threads, hashed: what a table's figures depend on."""
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    text = f"{cpu}|{os.cpu_count()}|{onnxruntime.__version__}|threads={threads}"
    return f"{platform.machine()}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"


def cache_path(provider: str, machine: str) -> Path:
    folder = os.environ.get(CACHE_ENV)
    if folder:
        root = Path(folder)
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spa-compiler" / "latency"
    return root / f"{provider}-{machine}.json"


def isotonic(values: Sequence[float]) -> np.ndarray:
    """Least-squares non-decreasing fit of *values* (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [sum, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    return np.concatenate([np.full(int(c), s / c) for s, c in blocks]) if blocks else np.zeros(0)


def staircase_step(widths: Sequence[int], ms: Sequence[float], tolerance: float = STEP_TOLERANCE) -> int:
    """The fast width multiple of a probe: the treads of its latency staircase.

    A width is *fast* when no wider one runs clearly faster.  The step is the
    smallest power of two whose multiples are all fast (blocked kernels: only
    multiples of the block are), widened to a larger power of two while
    rounding those multiples up to it costs nothing measurable (a GEMM tile:
    41 to 48 channels take the same time, so 48 is the tread).
    """
    time_at = dict(zip(widths, ms))
    ordered = sorted(time_at)
    best_from: dict[int, float] = {}
    running = float("inf")
    for w in reversed(ordered):
        running = min(running, time_at[w])
        best_from[w] = running
    fast = {w for w in ordered if time_at[w] <= best_from[w] * (1 + tolerance)}
    ascending = sorted(STEPS)
    base = next((s for s in ascending if all(w in fast for w in ordered if w % s == 0)), ascending[-1])
    step = base
    for wider in (s for s in ascending if s > base):
        multiples = [w for w in ordered if w % base == 0 and wider * math.ceil(w / wider) in time_at]
        if not all(time_at[wider * math.ceil(w / wider)] <= time_at[w] * (1 + tolerance) for w in multiples):
            break
        step = wider
    return step


def curve_widths(full: int, step: int) -> list[int]:
    """Multiples of *step* from about MIN_KEPT of *full* to *full*, at most POINTS of them, and *full*."""
    low = max(step, step * math.ceil(MIN_KEPT * full / step))
    multiples = list(range(low, full, step))
    if len(multiples) > POINTS:
        picks = np.linspace(0, len(multiples) - 1, POINTS).round().astype(int)
        multiples = [multiples[i] for i in sorted(set(picks))]
    return multiples + [full]


@dataclass
class Curve:
    """A fitted, non-decreasing latency curve over widths."""

    widths: list[int]
    ms: list[float]

    def __post_init__(self) -> None:
        self._fit = isotonic(self.ms)

    def at(self, width: float) -> float:
        return float(np.interp(width, self.widths, self._fit))

    @property
    def full(self) -> float:
        return float(self._fit[-1])


class LatencyTable:
    """Measured curves per layer signature and steps per op kind, for one provider and machine.

    *timer* measures what is missing (:class:`measure.OnnxruntimeTimer`, or a
    fake in tests); *path* is the cache file (None: memory only).
    """

    def __init__(self, timer: Timer, path: Optional[Path] = None, provider: str = "cpu", machine: str = "") -> None:
        self.timer, self.path, self.provider, self.machine = timer, path, provider, machine
        self.data = self._load()
        self.measured = 0  # layer curves and probes timed by this instance (not from the cache)

    def _load(self) -> dict:
        if self.path is None or not self.path.is_file():
            return {"steps": {}, "layers": {}}
        try:
            data = json.loads(self.path.read_text())
            if isinstance(data.get("steps"), dict) and isinstance(data.get("layers"), dict):
                return data
        except (OSError, ValueError, AttributeError):
            pass
        return {"steps": {}, "layers": {}}  # unreadable: measured again and rewritten

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"provider": self.provider, "machine": self.machine, **self.data}, indent=0))
        os.replace(tmp, self.path)

    # -- queries -------------------------------------------------------------------------------------
    def step(self, kind: str, dtype: str = "float32") -> int:
        """The fast width multiple of op *kind* in *dtype* on this provider (probed once, then cached)."""
        if kind not in KINDS:
            raise ValueError(f"unknown op kind {kind!r}")
        key = kind if dtype == "float32" else f"{kind}:{dtype}"
        if key not in self.data["steps"]:
            c_in, _, fixed = PROBES[kind]
            probe = Layer("probe", kind, c_in, PROBE_WIDTHS[-1], None, None, fixed, dtype)
            widths = [(w, w) if kind == DEPTHWISE else (c_in, w) for w in PROBE_WIDTHS]
            ms = self.timer(probe, widths)
            self.measured += 1
            self.data["steps"][key] = {"widths": list(PROBE_WIDTHS), "ms": [round(v, 6) for v in ms],
                                       "step": staircase_step(PROBE_WIDTHS, ms)}
        return int(self.data["steps"][key]["step"])

    def curves(self, layer: Layer) -> dict[str, Curve]:
        """The layer's fitted curves: 'out' and 'in' (a depthwise conv: 'both'), measured when missing."""
        entry = self.data["layers"].get(layer.signature)
        if entry is None:
            entry = self._measure(layer)
            self.data["layers"][layer.signature] = entry
            self.measured += 1
        return {axis: Curve(list(c["widths"]), list(c["ms"])) for axis, c in entry.items()}

    def _measure(self, layer: Layer) -> dict:
        step = self.step(layer.kind, layer.dtype)
        if layer.kind == DEPTHWISE:
            widths = curve_widths(layer.c_out, step)
            ms = self.timer(layer, [(w, w) for w in widths])
            return {"both": {"widths": widths, "ms": _rounded(ms)}}
        outs, ins = curve_widths(layer.c_out, step), curve_widths(layer.c_in, step)
        ms = self.timer(layer, [(layer.c_in, w) for w in outs] + [(w, layer.c_out) for w in ins[:-1]])
        return {"out": {"widths": outs, "ms": _rounded(ms[:len(outs)])},
                "in": {"widths": ins, "ms": _rounded(ms[len(outs):] + [ms[len(outs) - 1]])}}


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(float(v), 6) for v in values]


def open_table(provider: str, threads: int = 0, timer: Optional[Timer] = None) -> LatencyTable:
    """The cached table of *provider* ('CPUExecutionProvider', ...) on this machine, with the real timer."""
    from .measure import OnnxruntimeTimer
    from .providers import short_name

    machine = machine_key(threads)
    name = short_name(provider)
    return LatencyTable(timer or OnnxruntimeTimer([provider] + (["CPUExecutionProvider"] if name != "cpu" else []),
                                                  threads), cache_path(name, machine), name, machine)
