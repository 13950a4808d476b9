"""Shared fixtures: helper-built rule models and the committed torchvision skeletons."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TORCHVISION_DIR = ROOT / "models" / "torchvision"


@pytest.fixture(scope="session")
def demo_path() -> Path:
    return ROOT / "models" / "demo_cnn.onnx"


def torchvision_models() -> list[str]:
    return sorted(p.stem for p in TORCHVISION_DIR.glob("*.onnx"))


@pytest.fixture
def tmp_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path
