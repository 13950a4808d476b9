"""Index maps: how the positions of one channel space tie to those of another.

Every map is a set of (source position, target position) pairs, but most maps
are structured and are kept structured (identity, affine offset/stride,
Kronecker block) so the common case never materializes arrays and the
rewrite can reason about them.  ``pairs()`` gives the explicit form for the
union-find that computes atoms.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class IndexMap:
    """Ties positions of a source space (size ``src``) to a target space (size ``dst``)."""

    src: int
    dst: int

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def is_identity(self) -> bool:
        return False


@dataclass(frozen=True)
class Affine(IndexMap):
    """Source position i ties to target position ``start + step * i`` (identity, Concat offset, Slice)."""

    start: int = 0
    step: int = 1

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        i = np.arange(self.src, dtype=np.int64)
        return i, self.start + self.step * i

    @property
    def is_identity(self) -> bool:
        return self.start == 0 and self.step == 1 and self.src == self.dst


def identity(size: int) -> Affine:
    return Affine(size, size, 0, 1)


@dataclass(frozen=True)
class Block(IndexMap):
    """Channel c of a merged axis: target positions ``p*src*inner + c*inner + s``.

    Reshape/Flatten that merge a channel axis with ``outer`` axes before it and
    ``inner`` axes after it (``C x H x W -> C*H*W`` has outer 1, inner H*W).
    """

    outer: int = 1
    inner: int = 1

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        c = np.arange(self.src, dtype=np.int64)
        p = np.arange(self.outer, dtype=np.int64)
        s = np.arange(self.inner, dtype=np.int64)
        dst = (p[:, None, None] * (self.src * self.inner) + c[None, :, None] * self.inner + s[None, None, :])
        src = np.broadcast_to(c[None, :, None], dst.shape)
        return src.ravel(), dst.ravel()


@dataclass(frozen=True, eq=False)
class Explicit(IndexMap):
    """Arbitrary pairs (permutations such as channel shuffles, grouped-conv blocks)."""

    src_idx: Optional[np.ndarray] = None
    dst_idx: Optional[np.ndarray] = None

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.src_idx, dtype=np.int64), np.asarray(self.dst_idx, dtype=np.int64)


def group_blocks(src: int, dst: int, groups: int) -> Explicit:
    """Grouped conv: every input position of group g ties to every output position of group g.

    Expressed as a chain (each position to the first output of its group) to
    keep the pair count linear.
    """
    in_per, out_per = src // groups, dst // groups
    in_idx = np.arange(src, dtype=np.int64)
    out_first = (in_idx // in_per) * out_per
    out_idx = np.arange(dst, dtype=np.int64)
    # output positions tie to their group's first output through a self-loop-free chain on the source
    src_all = np.concatenate([in_idx, (out_idx // out_per) * in_per])
    dst_all = np.concatenate([out_first, out_idx])
    return Explicit(src, dst, src_all, dst_all)
