"""The README's set-up commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Set up", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None, "README's Set up section has no bash block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_has_exactly_two_setup_commands() -> None:
    commands = _setup_commands()
    assert len(commands) == 2, commands
    assert "sandbox up" in commands[0]


def test_ci_runs_the_readme_test_command() -> None:
    test_command = _setup_commands()[1]
    ci_lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert test_command in ci_lines


def test_test_command_runs_lint_types_and_pytest() -> None:
    script = (ROOT / ".ci" / "test").read_text(encoding="utf-8")
    for needle in ("bash .ci/install", "sandbox runner build", "ruff check", "mypy", "pytest"):
        assert needle in script, needle
    assert "-eq 5" in script  # pytest's exit 5 (no tests) is handled
