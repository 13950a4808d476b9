"""A fixed subset of tools/fuzz.py in-process: hostile models and file systems never end badly.

Every case must end in success (a model that passes onnx.checker) or one
``spac: error:`` line with exit 2 or 3: no traceback, no exit 1, no input
file changed, nothing left in the output's folder.  ``SPAC_FUZZ_CASES=N``
runs more cases (the full campaign with limits is ``python tools/fuzz.py``).
"""
from __future__ import annotations

import os

import pytest

from tools.fuzz import PROBLEMS, fuzz, summary

CASES = int(os.environ.get("SPAC_FUZZ_CASES", "100"))


@pytest.mark.parametrize("seed", [0])
def test_fuzz_subset_has_no_problem(seed, tmp_path):
    outcomes = fuzz(CASES, seed=seed, inprocess=True, budget=600, root=tmp_path)
    assert len(outcomes) == CASES
    problems = [o for o in outcomes if o.verdict in PROBLEMS]
    assert not problems, summary(outcomes)
    assert {o.verdict for o in outcomes} >= {"ok", "refused"}  # the cases reach both ends
