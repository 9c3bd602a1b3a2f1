"""Fixtures shared across the suite. Area-specific fixtures live beside their tests.

Container tests (marker ``container``) need a Docker engine and the runner image. On
CI (``CI=true`` or ``CI=1``) a missing engine is a failure, not a skip: the isolation is
the product, and a CI that skips container tests tests nothing that matters. The hook
below makes that hold for every container and browser test, whatever made it skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox.catalog import Catalog, load_catalog
from sandbox.grants import Grants, load_grants
from sandbox.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
MUST_RUN_ON_CI = ("container", "browser")


def on_ci() -> bool:
    """True under CI: CI=true or CI=1 (any case), as CI services set it."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Under CI, a container or browser test that skipped has FAILED."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or not on_ci() or hasattr(report, "wasxfail"):
        return
    marks = [m for m in MUST_RUN_ON_CI if item.get_closest_marker(m) is not None]
    if marks:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"{'/'.join(marks)} test skipped under CI (it must run): {reason}"


@pytest.fixture(scope="session")
def policies_dir() -> Path:
    return POLICIES


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog(POLICIES)


@pytest.fixture(scope="session")
def grants(catalog: Catalog) -> Grants:
    return load_grants(POLICIES, catalog)


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    """Settings with a fresh home under tmp_path and the demo policies."""
    return Settings(home=tmp_path / "home", policies=POLICIES)


@pytest.fixture(scope="session")
def demo_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small fabricated demo data (the 'raw' data of the tests), made once per session."""
    from sandbox.ops.demo_data import generate_demo_data

    root = tmp_path_factory.mktemp("demo-data")
    generate_demo_data(root, POLICIES, people=20_000, seed=7)
    return root


@pytest.fixture(scope="session")
def docker_client():  # type: ignore[no-untyped-def]
    """A Docker client, or skip (locally) / fail (on CI) when no engine answers."""
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:  # noqa: BLE001
        message = f"no Docker engine: {type(exc).__name__}"
        if on_ci():
            pytest.fail(message + " (CI must run the container tests)")
        pytest.skip(message)
    yield client
    client.close()


@pytest.fixture(scope="session")
def runner_image(docker_client) -> str:  # type: ignore[no-untyped-def]
    """The content-hashed runner image tag, built if missing."""
    from sandbox.ops.runner_image import ensure_image

    return ensure_image(docker_client).tag
