"""Fixtures of the multi-node tests: one simulated cluster (real raylets), S3 and MLflow servers per module."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))   # clusterkit

pytest.importorskip("moto.server", reason="pip install -e '.[test]' (moto[server]) for the cluster tests")
pytest.importorskip("s3fs", reason="pip install -e '.[test]' (s3fs) for the cluster tests")
