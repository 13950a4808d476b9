"""One registry for every named pass: normalizations, criteria, and third-party additions.

Built-in passes live in the top-level ``passes/`` folder, installed as the
``spa_compiler.passes`` package, and register through
the same entry-point group (``spa_compiler.passes``) an outside package uses,
so they have no privileges an outside pass lacks.  ``spac passes`` lists them.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from typing import Callable, Dict, TypeVar

from .criterion import Criterion
from .errors import UsageError

KINDS = ("normalize", "criterion")
ENTRY_POINT_GROUP = "spa_compiler.passes"
BUILTIN_MODULES = tuple(f"spa_compiler.passes.{name}" for name in ("normalize", "recurrent", "quantized", "criteria",
                                                                     "obspa", "calibrated"))


@dataclass(frozen=True)
class PassInfo:
    name: str
    kind: str
    summary: str
    factory: Callable
    origin: str
    level: str = ""  # normalizations: "model" (ModelProto in and out) or "graph" (edits the gs graph in place)


_REGISTRY: Dict[str, Dict[str, PassInfo]] = {kind: {} for kind in KINDS}
_loaded = False

T = TypeVar("T")


NORMALIZE_LEVELS = ("model", "graph")


def register(kind: str, name: str, *, level: str = "graph") -> Callable[[T], T]:
    """Class or function decorator: make a pass available by *name*.

    *level* (normalizations only): ``"model"`` for a pass that takes and returns an
    ``onnx.ModelProto``, ``"graph"`` for one that edits the gs graph in place; where
    it runs is ``spa_compiler.passes.pipeline``'s business.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown pass kind {kind!r}")
    if kind == "normalize" and level not in NORMALIZE_LEVELS:
        raise ValueError(f"normalize pass {name!r}: level must be one of {NORMALIZE_LEVELS}, got {level!r}")

    def wrap(obj: T) -> T:
        if kind == "criterion" and not (isinstance(obj, type) and issubclass(obj, Criterion)):
            raise TypeError(f"criterion pass {name!r} must be a subclass of spa_compiler.criterion.Criterion")
        doc = (obj.__doc__ or "").strip().splitlines()
        _REGISTRY[kind][name] = PassInfo(name, kind, doc[0] if doc else "", obj,
                                         getattr(obj, "__module__", "?"), level if kind == "normalize" else "")
        return obj

    return wrap


def load_passes() -> None:
    """Import the built-in passes and every installed plugin once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.value.split(":")[0] in BUILTIN_MODULES:
            continue
        ep.load()


def get(kind: str, name: str) -> PassInfo:
    load_passes()
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY[kind]))
        raise UsageError(f"unknown {kind} pass {name!r} (known: {known})") from None


def all_passes() -> list[PassInfo]:
    load_passes()
    return [info for kind in KINDS for info in _REGISTRY[kind].values()]
