"""Atoms: the smallest sets of channel positions that must be removed together.

Found by union-find over (space, position) pairs along every tie's index map,
vectorized with numpy (min-label hooking plus pointer jumping) so models with
millions of channel positions stay fast.  Groups whose ties are all identity
maps skip the union-find entirely: their atoms are simply the channel indices.
"""
from __future__ import annotations

import numpy as np


def connected_labels(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Connected components of an undirected graph on ``n`` vertices, as the min vertex id per vertex."""
    parent = np.arange(n, dtype=np.int64)
    if len(u) == 0:
        return parent
    while True:
        pu, pv = parent[u], parent[v]
        differ = pu != pv
        if not differ.any():
            break
        lo = np.minimum(pu[differ], pv[differ])
        hi = np.maximum(pu[differ], pv[differ])
        np.minimum.at(parent, hi, lo)
        while True:  # pointer jumping until every vertex points at a root
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
    return parent


def compute_atoms(group) -> None:
    """Fill ``group.atom_of`` (atom id per position of each space) and ``group.n_atoms``."""
    if group.frozen and any("unknown size" in r for r in group.frozen):
        group.n_atoms = 0
        return
    if all(t.map.is_identity for t in group.ties) and len(set(group.sizes.values())) == 1:
        size = next(iter(group.sizes.values()))
        group.atom_of = {s: np.arange(size, dtype=np.int64) for s in group.spaces}
        group.n_atoms = size
        return
    offsets, total = {}, 0
    for space in group.spaces:
        offsets[space] = total
        total += group.sizes[space]
    us, vs = [], []
    for tie in group.ties:
        a, b = tie.map.pairs()
        us.append(a + offsets[tie.a])
        vs.append(b + offsets[tie.b])
    labels = connected_labels(total, np.concatenate(us) if us else np.zeros(0, np.int64),
                              np.concatenate(vs) if vs else np.zeros(0, np.int64))
    # number atoms in order of first appearance so ids are deterministic and dense
    _, first, dense = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    ids = order[dense]
    group.atom_of = {s: ids[offsets[s]: offsets[s] + group.sizes[s]] for s in group.spaces}
    group.n_atoms = int(len(first))
