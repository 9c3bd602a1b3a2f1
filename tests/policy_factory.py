"""Factories for policy files: copy the demo policies and change one thing."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

POLICIES = Path(__file__).resolve().parent.parent / "policies"

Edit = Callable[[dict[str, Any]], None]


def make_policies(tmp: Path, *, catalog: Edit | None = None, grants: Edit | None = None) -> Path:
    """A copy of policies/ under ``tmp`` with the given edits applied to the YAML."""
    out = tmp / "policies"
    shutil.copytree(POLICIES, out)
    for name, edit in (("catalog.yaml", catalog), ("grants.yaml", grants)):
        if edit is None:
            continue
        data = yaml.safe_load((out / name).read_text("utf-8"))
        edit(data)
        (out / name).write_text(yaml.safe_dump(data, allow_unicode=True), "utf-8")
    return out


def dataset(data: dict[str, Any], dataset_id: str) -> dict[str, Any]:
    return next(d for d in data["datasets"] if d["id"] == dataset_id)


def grant(data: dict[str, Any], grant_id: str) -> dict[str, Any]:
    return next(g for g in data["grants"] if g["id"] == grant_id)


def add_grant(data: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    g = copy.deepcopy(grant(data, "g-jinshu-employment"))
    g.update(id="g-extra", scenario={"id": "extra", "purpose": "A test scenario."})
    g.update(overrides)
    data["grants"].append(g)
    return g
