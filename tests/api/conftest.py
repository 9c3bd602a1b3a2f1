"""API fixtures: a Service over synthetic data (local executor), a TestClient, tokens."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from api_helpers import DATASETS, Api
from fastapi.testclient import TestClient

from sandbox.api.app import create_app
from sandbox.service import Service
from sandbox.settings import Settings


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory, catalog, policies_dir) -> Path:
    """Synthetic data with the catalogue's schema (the local executor reads only this)."""
    from sandbox.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, catalog, DATASETS, units=3000, seed=3, policies=policies_dir)
    return root


@pytest.fixture()
def api_settings(
    tmp_path: Path, policies_dir: Path, synthetic_root: Path, request: pytest.FixtureRequest
) -> Settings:
    from tests.conftest import suite_database_url

    return Settings(
        database_url=suite_database_url(request),
        home=tmp_path / "home",
        policies=policies_dir,
        data_root=synthetic_root,
        executor="local",
        concurrency=2,
        rate_per_minute=10_000,
        max_body_bytes=64 * 1024,
    )


@pytest.fixture()
def make_api(api_settings: Settings) -> Iterator[Callable[..., Api]]:
    opened: list[TestClient] = []

    def make(executor: Any = None, **overrides: Any) -> Api:
        settings = api_settings.replace(**overrides)
        service = Service(settings, executor=executor)
        # the console (sandbox/web) is tested on its own; these tests pin the /v1 API
        client = TestClient(create_app(settings, service=service, include_console=False))
        client.__enter__()
        opened.append(client)
        return Api(client, service)

    yield make
    for c in opened:
        c.__exit__(None, None, None)


@pytest.fixture()
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()
