"""Task-level checks of 18 real pretrained models (shared/realmodels/fetch.sh) on realistic inputs.

Each case builds inputs with its package's own preprocessing and reads the task output as the
package does; ``tools/realmodels_bench.py`` prunes every model at several budgets and criteria and
reports how much of the task output survives.  See docs/realmodels.md.
"""
from __future__ import annotations

from .common import (  # noqa: F401
    Case,
    Prepared,
    ensure_models,
    fidelity,
    models_dir,
    run_all,
    task_agreement,
)


def all_cases() -> list[Case]:
    from . import arabic, audio, images, thai

    return images.cases() + thai.cases() + arabic.cases() + audio.cases()
