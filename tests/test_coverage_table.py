"""tools/coverage.py merges rows: a run in one framework's venv never drops another framework's rows."""
from __future__ import annotations

import json

from tools.coverage import merged, write_tables


def test_rows_of_other_frameworks_survive_and_a_rerun_replaces_its_row(tmp_path):
    out = tmp_path / "coverage"
    write_tables([{"model": "resnet18", "framework": "torchvision", "status": "ok"},
                  {"model": "mlp", "framework": "jax", "status": "error: old"}], out)
    rows = merged(out, {"model": "mlp", "framework": "jax", "status": "ok"}, fresh=False)
    assert sorted((r["model"], r["status"]) for r in rows) == [("mlp", "ok"), ("resnet18", "ok")]
    text = write_tables(rows, out)
    assert "| jax | 1 / 1 |" in text and "| all | 2 / 2 |" in text
    assert len(json.loads(out.with_suffix(".json").read_text())) == 2


def test_fresh_starts_an_empty_table(tmp_path):
    out = tmp_path / "coverage"
    write_tables([{"model": "resnet18", "framework": "torchvision", "status": "ok"}], out)
    assert merged(out, {"model": "mlp", "framework": "jax", "status": "ok"}, fresh=True) == \
        [{"model": "mlp", "framework": "jax", "status": "ok"}]
