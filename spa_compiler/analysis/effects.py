"""The vocabulary rules speak: channel spaces, ties, parameter slices and effects.

A *space* is one axis of one tensor, named ``(tensor name, axis)``.  A rule,
asked about one space at one node, answers with an :class:`Effect`: which
other spaces it is tied to (and by which index map), which parameter slices
go with it, and whether it must be frozen or is only approximately prunable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .maps import IndexMap

Space = tuple[str, int]

PRODUCER = "producer"  # output-channel slices of a boundary (Conv weight axis 0, bias)
CONSUMER = "consumer"  # input-channel slices of a boundary (Conv weight axis 1): the oracle zeroes these
PASSIVE = "passive"    # per-channel parameters on the way (BatchNorm, PRelu slopes, Add/Mul constants)


@dataclass(frozen=True)
class Tie:
    """Positions of space ``a`` tied to positions of space ``b`` through ``map`` (a -> b)."""

    a: Space
    b: Space
    map: IndexMap


@dataclass(frozen=True)
class ParamSlice:
    """Axis ``axis`` of constant ``tensor`` (input ``input_index`` of ``node``) indexed like its space."""

    space: Space
    tensor: str
    axis: int
    role: str
    node: str
    op: str
    input_index: int


@dataclass
class Effect:
    ties: list[Tie] = field(default_factory=list)
    params: list[ParamSlice] = field(default_factory=list)
    freeze: Optional[str] = None
    inexact: Optional[str] = None


def frozen(reason: str) -> Effect:
    return Effect(freeze=reason)


NEUTRAL = Effect()
