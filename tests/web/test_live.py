"""The browser tests' gate: without Chromium they skip locally and FAIL on CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.web import live


def test_missing_chromium_fails_on_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(live, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the browser tests"):
        live.chromium_or_fail()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        live.chromium_or_fail()


def test_present_chromium_passes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "chromium"
    fake.write_text("")
    monkeypatch.setattr(live, "CHROMIUM", fake)
    monkeypatch.setenv("CI", "true")
    live.chromium_or_fail()  # no exception
