"""Shared fixtures. Real data lives beside the repository in ``../shared/data`` (never copied in)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # simulated.py (tests run in importlib mode)


def _shared_data_dir() -> Path | None:
    env = os.environ.get("EMSTREAM_SHARED_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$EMSTREAM_SHARED_DATA``); tests using it skip where it is absent."""
    d = _shared_data_dir()
    if d is None:
        pytest.skip("../shared/data is not present beside the repository")
    return d


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests save screenshots and reports for people to look at (``test-artifacts/``)."""
    d = REPO / "test-artifacts"
    d.mkdir(exist_ok=True)
    return d
