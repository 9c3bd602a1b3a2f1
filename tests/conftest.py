"""Fixtures shared across the suite. Area-specific fixtures live beside their tests.

Container tests (marker ``container``) need a Docker engine and the runner image. On
CI (``CI=true`` or ``CI=1``) a missing engine is a failure, not a skip: the isolation is
the product, and a CI that skips container tests tests nothing that matters. The hook
below makes that hold for every container and browser test, whatever made it skip.

PostgreSQL (marker ``postgres``): ``postgres_cluster`` starts a throwaway cluster once
per session (``initdb`` + ``pg_ctl`` from the Debian ``postgresql`` package, which
.ci/install installs; unix socket only, in a fresh directory; as the ``postgres`` user
when the tests run as root), ``pg_url`` makes a fresh database per test, and the
``database`` fixture runs a test on both back ends: a SQLite file and a PostgreSQL
URL. Under CI a skipped postgres test fails, like a container test.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.catalog import Catalog, load_catalog
from sandbox.grants import Grants, load_grants
from sandbox.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
MUST_RUN_ON_CI = ("container", "browser", "postgres")


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


def suite_database_url(request: pytest.FixtureRequest) -> str:
    """ "" (SQLite under HOME), or with SANDBOX_TEST_BACKEND=postgresql a fresh PostgreSQL
    database: the Settings fixtures then run the service, API and CLI tests on it too."""
    if os.environ.get("SANDBOX_TEST_BACKEND", "").strip().lower() != "postgresql":
        return ""
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture()
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings with a fresh home under tmp_path and the demo policies."""
    return Settings(
        home=tmp_path / "home", policies=POLICIES, database_url=suite_database_url(request)
    )


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


# --- PostgreSQL ---------------------------------------------------------------------


def _pg_bindir() -> Path | None:
    """Where initdb and pg_ctl are: $SANDBOX_TEST_PG_BIN, the PATH, or the newest
    /usr/lib/postgresql/<version>/bin (Debian keeps them off the PATH)."""
    env = os.environ.get("SANDBOX_TEST_PG_BIN")
    if env:
        return Path(env)
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return versions[-1].parent if versions else None


class PostgresCluster:
    def __init__(self, socket_dir: Path, user: str) -> None:
        self.socket_dir = socket_dir
        self.user = user

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@/{database}?host={self.socket_dir}"

    def create_database(self) -> str:
        import psycopg

        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster for the session; skip (locally) / fail (CI)."""
    bindir = _pg_bindir()
    if bindir is None or not (bindir / "initdb").exists():
        message = "no PostgreSQL server binaries (apt-get install postgresql)"
        if on_ci():
            pytest.fail(message + " (CI must run the postgres tests)")
        pytest.skip(message)
    base = Path(tempfile.mkdtemp(prefix="jinyu-pg-"))  # short: a socket path is ≤ 107 bytes
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root
        shutil.chown(base, user="postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, log = base / "data", base / "server.log"
    user = "jinyu"
    options = (
        f"-k {base} -c listen_addresses='' -c max_connections=400 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off"
    )
    try:
        subprocess.run(
            [*as_user, str(bindir / "initdb"), "-D", str(data), "--auth=trust",
             f"--username={user}", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
             "-o", options, "start"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        shutil.rmtree(base, ignore_errors=True)
        message = f"could not start PostgreSQL: {type(exc).__name__}"
        if on_ci():
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield PostgresCluster(base, user)
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture()
def pg_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (dropped after it)."""
    name = postgres_cluster.create_database()
    yield postgres_cluster.url(name)
    postgres_cluster.drop_database(name)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """The control-plane database on each back end: a SQLite file, a PostgreSQL URL."""
    if request.param == "sqlite":
        return tmp_path / "sandbox.db"
    url: str = request.getfixturevalue("pg_url")
    return url
