"""Fixtures of the sweep tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from sweepkit import make_store


@pytest.fixture
def store(tmp_path: Path) -> str:
    """Synthetic features of backbones bb (16-d) and cc (8-d) on digits (carved val) and dtd (official val)."""
    return make_store(tmp_path)
