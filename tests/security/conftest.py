"""Security (red-team) fixtures: a real app over one Service (local executor on
synthetic data unless a test overrides the settings), with tokens per person."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sec_helpers import DATASETS, Client

from sandbox.api.app import create_app
from sandbox.service import Service
from sandbox.settings import Settings


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory, catalog, policies_dir) -> Path:
    from sandbox.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(root, catalog, DATASETS, units=2000, seed=5, policies=policies_dir)
    return root


@pytest.fixture()
def sec_settings(tmp_path: Path, policies_dir: Path, synthetic_root: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        policies=policies_dir,
        data_root=synthetic_root,
        executor="local",
        concurrency=2,
        rate_per_minute=10_000,
        max_body_bytes=64 * 1024,
    )


@pytest.fixture()
def make_client(sec_settings: Settings) -> Iterator[Callable[..., Client]]:
    opened: list[TestClient] = []

    def make(*, console: bool = False, executor_obj: Any = None, **overrides: Any) -> Client:
        settings = sec_settings.replace(**overrides)
        service = Service(settings, executor=executor_obj)
        app = create_app(settings, service=service, include_console=console)
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        return Client(client, service)

    yield make
    for c in opened:
        c.__exit__(None, None, None)


@pytest.fixture()
def sec(make_client: Callable[..., Client]) -> Client:
    return make_client()
