"""Settings are declared once and read from the environment only at the edge."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sandbox.settings import FIELDS, Settings


def test_every_setting_has_an_env_name_and_help() -> None:
    envs = [f.metadata["env"] for f in FIELDS]
    assert len(envs) == len(set(envs))
    for f in FIELDS:
        assert f.metadata["env"].startswith("SANDBOX_"), f.name
        assert f.metadata["help"].strip(), f.name


def test_from_env_converts_each_type() -> None:
    s = Settings.from_env(
        {
            "SANDBOX_HOME": "/srv/jinyu",
            "SANDBOX_PORT": "9001",
            "SANDBOX_CPUS": "1.5",
            "SANDBOX_EXECUTOR": "local",
            "SANDBOX_DATA_ROOT": "/data/raw",
        }
    )
    assert s.home == Path("/srv/jinyu")
    assert s.port == 9001 and isinstance(s.port, int)
    assert s.cpus == 1.5
    assert s.executor == "local"
    assert s.data_dir == Path("/data/raw")
    assert s.db_path == Path("/srv/jinyu/sandbox.db")


def test_overrides_win_and_none_overrides_are_ignored() -> None:
    s = Settings.from_env({"SANDBOX_PORT": "9001"}, port=7000, home=None)
    assert s.port == 7000
    assert s.home == Settings().home


def test_empty_env_values_mean_default_and_data_dir_defaults_under_home() -> None:
    s = Settings.from_env({"SANDBOX_PORT": "", "SANDBOX_HOME": "/h"})
    assert s.port == Settings().port
    assert s.data_dir == Path("/h/data")
    assert dataclasses.replace(s, port=1).port == 1


def test_docs_settings_md_is_generated_from_fields() -> None:
    from sandbox.cli.reference import settings_markdown

    doc = Path(__file__).resolve().parent.parent / "docs" / "settings.md"
    expected = settings_markdown()
    assert doc.read_text(encoding="utf-8") == expected, "run: sandbox settings --markdown"
