"""Fixtures of the executor tests; the factories live in executor_helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from executor_helpers import write_root


@pytest.fixture()
def raw_root(tmp_path: Path) -> Path:
    """'Raw' (not synthetic) data: what only the container may read."""
    return write_root(tmp_path / "raw", synthetic=False)


@pytest.fixture()
def synthetic_root(tmp_path: Path) -> Path:
    return write_root(tmp_path / "synthetic", synthetic=True)
