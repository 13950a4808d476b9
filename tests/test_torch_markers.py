"""Marker values (spa_compiler/torch/markers.py): distinct, tiny, and decoded back to their element, on both signs."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spa_compiler.torch.markers import HALF, MAX_ELEMENTS, TensorTable, encode  # noqa: E402


def test_markers_round_trip_past_the_positive_range():
    table = TensorTable(torch.nn.Linear(2, 2))
    table.total = MAX_ELEMENTS  # as for a 300 M parameter model (ViT-L), without building one
    indices = np.array([[0, 5, HALF - 1], [HALF, HALF + 7, MAX_ELEMENTS - 1]])
    values = encode(indices)
    assert len(np.unique(values)) == indices.size and (np.abs(values) < 1e-28).all() and (values != 0).all()
    assert (values[1] < 0).all(), "the second half carries the sign bit"
    np.testing.assert_array_equal(table.decode(values), indices)
    assert table.decode(np.array([1e-3, -1.0], dtype=np.float32)) is None
    table.total = HALF + 7
    assert table.decode(values) is None, "an index past the table is no marker"
