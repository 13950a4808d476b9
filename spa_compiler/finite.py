"""Non-finite weights: refused (or warned about) on the way in, never introduced on the way out.

Why a module of its own: a NaN weight makes every statistic, score and
compensated weight NaN, and the written model computes NaN everywhere while
the run reports success.  The input is checked once after compilation; the
final guard runs on every rewritten constant just before the output is
written, whatever produced it (slicing, OBSPA compensation, BN recalibration).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

from .errors import CompileError, UsageError

_CHUNK = 1 << 24  # elements per isfinite() pass: bounded temporaries on multi-GB weights


def _floating(values) -> bool:
    return np.asarray(values).dtype.kind in "fc" if not isinstance(values, LazyValues) else \
        np.dtype(values.dtype).kind in "fc"


def nonfinite_kinds(values) -> tuple[bool, bool]:
    """(has NaN, has +-Inf) of an array, read in chunks."""
    flat = np.asarray(values).reshape(-1)
    nan = inf = False
    for start in range(0, flat.size, _CHUNK):
        part = flat[start:start + _CHUNK]
        nan = nan or bool(np.isnan(part).any())
        inf = inf or bool(np.isinf(part).any())
        if nan and inf:
            break
    return nan, inf


def _float_constants(graph: gs.Graph) -> Iterable[gs.Constant]:
    from .weights import _constants

    for const in _constants(graph):
        try:
            if _floating(const._values):
                yield const
        except (TypeError, ValueError):
            continue


def check_input_weights(graph: gs.Graph, parameters: set[str], force: bool) -> tuple[set[str], list[str]]:
    """Names of the input's constants holding NaN or Inf, and warnings (with *force*).

    Refused (exit 2, naming the initializer): NaN anywhere, and Inf in a
    parameter a pruning group reads (*parameters*); Inf elsewhere is a
    legitimate mask constant (``-inf`` before a softmax).
    """
    from .weights import release_pages

    seen, bad = set(), []
    for const in _float_constants(graph):
        values = const._values.load() if isinstance(const._values, LazyValues) else const._values
        nan, inf = nonfinite_kinds(values)  # read without caching: mapped weights stay mapped
        del values
        release_pages()
        if nan or inf:
            seen.add(const.name)
        if nan or (inf and const.name in parameters):
            bad.append(f"{const.name} ({'NaN' if nan else 'Inf'})")
    if bad and not force:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise UsageError(f"non-finite weights in the input: {', '.join(bad[:3])}{more}; pruning would spread them "
                         "(use --force to prune anyway)")
    warnings = [f"non-finite weights in the input: {', '.join(bad[:3])}"] if bad else []
    return seen, warnings


def guard_written_weights(graph: gs.Graph, allowed: set[str]) -> None:
    """The last check before writing: no rewritten constant is non-finite unless it was in the input.

    Only constants held as arrays are read: weights still mapped from the
    input file are unchanged slices of it.
    """
    for const in _float_constants(graph):
        if isinstance(const._values, LazyValues) or const.name in allowed:
            continue
        if any(nonfinite_kinds(const.values)):
            raise CompileError(f"pruning produced non-finite values in {const.name}, which the input did not "
                               "have; nothing written (try --damping 0.1 or --no-compensate)")


def guard_written_model(model: onnx.ModelProto, allowed: set[str]) -> None:
    """:func:`guard_written_weights` for a model rebuilt as a protobuf (BatchNorm recalibration)."""
    from onnx import numpy_helper
    from onnx.external_data_helper import uses_external_data

    for tensor in model.graph.initializer:
        if tensor.name in allowed or uses_external_data(tensor) or \
                tensor.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE):
            continue
        if any(nonfinite_kinds(numpy_helper.to_array(tensor))):
            raise CompileError(f"pruning produced non-finite values in {tensor.name}, which the input did not "
                               "have; nothing written")
