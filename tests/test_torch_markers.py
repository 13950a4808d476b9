"""Marker values (spa_compiler/torch/markers.py): distinct, tiny, and decoded back to their element, on both signs,
up to 2^30 elements, and never what a real constant holds."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from spa_compiler.errors import UsageError  # noqa: E402
from spa_compiler.torch.markers import HALF, MAX_ELEMENTS, TensorTable, encode, encode_range  # noqa: E402

F32 = np.finfo(np.float32)


def big_table(total: int = MAX_ELEMENTS) -> TensorTable:
    table = TensorTable(torch.nn.Linear(2, 2))
    table.total = total  # as for a 645 M parameter model (RegNetY-128GF), without building one
    return table


def test_markers_above_2_to_the_29_round_trip_exactly():
    assert MAX_ELEMENTS == 2**30 > 645_227_966, "RegNetY-128GF, the largest torchvision classifier, fits"
    rng = np.random.default_rng(0)
    indices = np.concatenate([[0, 1, 5, HALF - 1, HALF, HALF + 1, HALF + 7, 2**29 + 12345, MAX_ELEMENTS - 1],
                              rng.integers(0, MAX_ELEMENTS, 200_000), rng.integers(HALF, MAX_ELEMENTS, 200_000)])
    values = encode(indices)
    decoded = big_table().decode(values)
    assert decoded is not None and decoded.dtype == np.int32
    np.testing.assert_array_equal(decoded, indices)
    assert ((values < 0) == (indices >= HALF)).all(), "the upper half carries the sign bit"
    unique = np.unique(indices)
    assert len(np.unique(encode(unique))) == len(unique), "distinct elements, distinct markers"
    assert big_table(HALF + 7).decode(values) is None, "an index past the table is no marker"


def test_marker_ranges_match_per_element_markers_across_the_sign_change():
    for start, count in ((0, 10), (HALF - 3, 7), (MAX_ELEMENTS - 5, 5), (123_456_789, 1000)):
        np.testing.assert_array_equal(encode_range(start, count).view(np.uint32),
                                      encode(np.arange(start, start + count)).view(np.uint32))


def test_markers_stay_in_a_window_no_real_constant_uses():
    edges = encode(np.array([0, HALF - 1, HALF, MAX_ELEMENTS - 1]))
    magnitude = np.abs(edges)
    assert (magnitude > F32.tiny).all(), "finfo.tiny (a clamp floor) and every subnormal, zero included, stay out"
    assert magnitude.max() <= 2.0**-62 < 1e-18, "far below the smallest eps (1e-12) a layer uses"
    real = np.array([0.0, -0.0, 1.0, -1.0, 0.5, 2.0, 1e-5, 1e-6, 1e-8, 1e-10, 1e-12, -1e-12, 1e-15, 3e-19,
                     F32.eps, F32.tiny, -F32.tiny, F32.smallest_subnormal, 1e-40, -1e-40, F32.max, F32.min,
                     np.inf, -np.inf, np.nan, 1 / 3, np.pi, 1e30], dtype=np.float32)
    table = big_table()
    for value in real:
        assert table.decode(np.array([value], dtype=np.float32)) is None, f"{value!r} decoded as a marker"
    markers = encode(np.array([3, HALF + 3]))
    for value in real:
        assert table.decode(np.array([markers[0], value, markers[1]], dtype=np.float32)) is None


def test_more_elements_than_markers_is_refused_with_one_line():
    wide = torch.nn.Linear(2**15, 2**15 + 1, device="meta")  # 2^30 + 2^15 + ... elements, no memory used
    with pytest.raises(UsageError, match=f"at most {MAX_ELEMENTS}"):
        TensorTable(wide)


def test_marking_swaps_the_data_back_and_values_read_the_module():
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(5, 2))
    table = TensorTable(module)
    before = {name: (t, t.detach().clone()) for name, t in module.state_dict(keep_vars=True).items()}
    with table.marked(module):
        weight = module[0].weight.detach().numpy()
        np.testing.assert_array_equal(table.decode(weight), np.arange(weight.size).reshape(weight.shape))
    for name, (tensor, values) in before.items():
        now = module.state_dict(keep_vars=True)[name]
        assert now is tensor and torch.equal(now, values), name
    flat = np.concatenate([module.state_dict()[s.name].numpy().ravel() for s in table.slots])
    values = table.values(module)
    index = np.array([[0, table.total - 1], [table.slots[1].offset, 17]])
    np.testing.assert_array_equal(values[index], flat[index])
    np.testing.assert_array_equal(values[np.arange(table.total)[::-1]], flat[::-1])
