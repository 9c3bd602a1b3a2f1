"""Under CI, a container or browser test cannot skip: the conftest hook fails it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import on_ci

ROOT = Path(__file__).resolve().parent.parent

SKIPPING = """
import pytest

@pytest.mark.container
def test_needs_docker():
    pytest.skip("no Docker engine")

@pytest.mark.browser
@pytest.mark.skipif(True, reason="no Chromium")
def test_needs_chromium():
    pass

def test_plain_may_skip():
    pytest.skip("not relevant here")
"""


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_gate_sample.py"
    test.write_text(SKIPPING, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            "pyproject.toml",
            "--rootdir",
            str(ROOT),
            "-p",
            "tests.conftest",
            str(test),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("value", ["true", "1", "TRUE"])
def test_under_ci_a_skipped_container_or_browser_test_fails(tmp_path: Path, value: str) -> None:
    result = _run(tmp_path, value)
    assert result.returncode == 1, result.stdout
    # a skip in the test fails it; a skip in setup (a marker, a fixture) errors it
    assert "1 failed, 1 skipped, 1 error" in result.stdout, result.stdout
    assert "FAILED ::test_needs_docker - container test skipped under CI" in result.stdout
    assert "ERROR ::test_needs_chromium - browser test skipped under CI" in result.stdout


def test_outside_ci_they_skip(tmp_path: Path) -> None:
    result = _run(tmp_path, None)
    assert result.returncode == 0, result.stdout
    assert "3 skipped" in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("1", True), ("", False), ("0", False), ("false", False)],
)
def test_ci_values(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("CI", value)
    assert on_ci() is expected
