"""JSON text of reports: numpy scalars and arrays become plain numbers and lists."""
from __future__ import annotations

import json


def _default(value):
    import numpy as np

    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def to_json(data) -> str:
    return json.dumps(data, indent=2, default=_default)
