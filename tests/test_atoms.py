"""Atoms and index maps: the vectorized union-find against networkx, and reshape factorizations."""
from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spa_compiler.analysis.atoms import connected_labels
from spa_compiler.analysis.maps import Block, group_blocks
from spa_compiler.analysis.rules.reshape import reshape_runs


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 60), st.data())
def test_union_find_matches_networkx(n, data):
    m = data.draw(st.integers(0, 2 * n))
    u = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m)), dtype=np.int64)
    v = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=m, max_size=m)), dtype=np.int64)
    labels = connected_labels(n, u, v)
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(zip(u.tolist(), v.tolist()))
    for comp in nx.connected_components(graph):
        comp = sorted(comp)
        assert len({labels[i] for i in comp}) == 1
        assert labels[comp[0]] == comp[0]


def test_block_map_is_channel_major():
    src, dst = Block(src=3, dst=12, outer=1, inner=4).pairs()
    assert dst[src == 1].tolist() == [4, 5, 6, 7]
    src, dst = Block(src=3, dst=12, outer=4, inner=1).pairs()  # NHWC flatten: channel innermost
    assert dst[src == 1].tolist() == [1, 4, 7, 10]


def test_group_blocks_ties_whole_groups():
    src, dst = group_blocks(6, 9, 3).pairs()
    n = 6 + 9
    labels = connected_labels(n, np.where(np.arange(len(src)) >= 0, src, 0), dst + 6)
    assert len(set(labels.tolist())) == 3


@pytest.mark.parametrize("inp,out,expected", [
    ([None, 8, 4, 4], [None, 128], [([0], [0]), ([1, 2, 3], [1])]),
    ([None, 116, 8, 8], [None, 2, 58, 8, 8], [([0], [0]), ([1], [1, 2]), ([2], [3]), ([3], [4])]),
    ([None, 12, 1, 1], [None, 12], [([0], [0]), ([1, 2, 3], [1])]),
    ([2, 6], [3, 4], [([0, 1], [0, 1])]),
])
def test_reshape_runs(inp, out, expected):
    assert reshape_runs(inp, out) == expected
