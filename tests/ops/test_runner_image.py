"""The runner image: content-hashed tag, build/reuse, and what the image holds."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sandbox.cli import app
from sandbox.ops.rootfs import RECIPE
from sandbox.ops.runner_image import (
    REPOSITORY,
    default_runner_dir,
    ensure_image,
    image_tag,
    runner_versions,
)

LABELS = {"jinyu.sandbox": "1"}


def copy_runner_dir(tmp_path: Path) -> Path:
    """A private copy of runner/ that a test may change."""
    target = tmp_path / "runner"
    shutil.copytree(
        default_runner_dir(), target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    return target


def run_in_image(client, tag: str, code: str) -> str:  # type: ignore[no-untyped-def]
    out = client.containers.run(
        tag,
        entrypoint=["python3", "-c", code],
        network_mode="none",
        labels=LABELS,
        remove=True,
    )
    return out.decode().strip()


# --- the tag -----------------------------------------------------------------------


def test_tag_is_stable_and_independent_of_location(tmp_path: Path) -> None:
    copy = copy_runner_dir(tmp_path)
    tag = image_tag(copy)
    assert tag == image_tag(copy)
    assert tag == image_tag(default_runner_dir())
    repository, _, digest = tag.partition(":")
    assert repository == REPOSITORY
    assert len(digest) == 16 and int(digest, 16) >= 0


def test_tag_changes_when_an_executor_file_changes(tmp_path: Path) -> None:
    copy = copy_runner_dir(tmp_path)
    before = image_tag(copy)
    init = copy / "sandbox_runner" / "__init__.py"
    init.write_text(init.read_text() + "\n# changed\n")
    changed = image_tag(copy)
    assert changed != before
    (copy / "sandbox_runner" / "extra.py").write_text("X = 1\n")
    assert image_tag(copy) not in {before, changed}


def test_tag_ignores_bytecode_caches(tmp_path: Path) -> None:
    copy = copy_runner_dir(tmp_path)
    before = image_tag(copy)
    cache = copy / "sandbox_runner" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "__init__.cpython-311.pyc").write_bytes(b"\x00" * 16)
    assert image_tag(copy) == before


def test_tag_changes_with_the_recipe_and_library_versions(tmp_path: Path) -> None:
    copy = copy_runner_dir(tmp_path)
    versions = runner_versions()
    before = image_tag(copy, versions=versions)
    assert image_tag(copy, versions={**versions, "duckdb": "0.0.1"}) != before
    dockerfile = copy / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "\n# changed\n")
    after_dockerfile = image_tag(copy, versions=versions)
    assert after_dockerfile != before
    strip = copy / "build" / "strip_pylib.py"
    strip.write_text(strip.read_text() + "\n# changed\n")
    assert image_tag(copy, versions=versions) != after_dockerfile


def test_runner_versions_are_the_hosts() -> None:
    import duckdb
    import pyarrow

    assert runner_versions() == {"duckdb": duckdb.__version__, "pyarrow": pyarrow.__version__}


def test_cli_tag_matches_image_tag() -> None:
    result = CliRunner().invoke(app, ["runner", "tag", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["tag"] == image_tag()
    assert body["versions"] == runner_versions()


# --- the image (real Docker) --------------------------------------------------------


@pytest.mark.container
def test_ensure_image_builds_a_changed_executor_then_reuses_it(
    docker_client, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    copy = copy_runner_dir(tmp_path)
    (copy / "sandbox_runner" / "_test_marker.py").write_text(f"MARK = {time.time_ns()}\n")
    for path in copy.rglob("*"):  # as a umask-077 checkout would leave them
        path.chmod(0o700 if path.is_dir() else 0o600)
    tag = image_tag(copy)
    assert tag != image_tag()
    messages: list[str] = []
    try:
        built = ensure_image(docker_client, runner_dir=copy, progress=messages.append)
        assert built.tag == tag
        assert built.reused is False
        assert built.path_used in {"dockerfile", "offline"}
        assert any("smoke test passed" in m for m in messages)
        assert built.size_bytes > 0
        assert (
            run_in_image(
                docker_client, tag, "import sandbox_runner._test_marker as m; print(m.MARK > 0)"
            )
            == "True"
        )

        started = time.monotonic()
        again = ensure_image(docker_client, runner_dir=copy)
        assert time.monotonic() - started < 3.0
        assert again.reused is True
        assert again.tag == tag
        assert again.path_used == built.path_used
    finally:
        import docker.errors

        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag, force=True)


@pytest.mark.container
def test_second_ensure_image_reuses_quickly(docker_client, runner_image: str) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    info = ensure_image(docker_client)
    assert time.monotonic() - started < 3.0
    assert info.reused is True
    assert info.tag == runner_image == image_tag()


@pytest.mark.container
def test_image_runs_as_non_root(docker_client, runner_image: str) -> None:  # type: ignore[no-untyped-def]
    out = run_in_image(
        docker_client, runner_image, "import os; print(os.getuid(), os.getgid(), os.getcwd())"
    )
    assert out == f"{RECIPE['uid']} {RECIPE['uid']} /"


@pytest.mark.container
def test_image_has_the_hosts_duckdb_and_pyarrow(docker_client, runner_image: str) -> None:  # type: ignore[no-untyped-def]
    code = (
        "import duckdb, pyarrow, pyarrow.parquet, json; "
        "t = duckdb.connect().execute('select 6 * 7 as x').to_arrow_table(); "
        "print(json.dumps({'duckdb': duckdb.__version__, 'pyarrow': pyarrow.__version__, "
        "'x': t.column('x').to_pylist()}))"
    )
    body = json.loads(run_in_image(docker_client, runner_image, code))
    assert body == {**runner_versions(), "x": [42]}


@pytest.mark.container
def test_image_config_entrypoint_env_and_bytecode(docker_client, runner_image: str) -> None:  # type: ignore[no-untyped-def]
    config = docker_client.images.get(runner_image).attrs["Config"]
    assert config["Entrypoint"] == ["python3", "-m", "sandbox_runner"]
    assert config["User"].split(":")[0] == str(RECIPE["uid"])
    assert config["WorkingDir"] == "/"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1"
    # Bytecode is precompiled for the executor and the libraries: start-up compiles nothing.
    code = (
        "import importlib.util, os, sandbox_runner, duckdb, pyarrow; "
        "mods = (sandbox_runner, duckdb, pyarrow); "
        "print(all(os.path.exists(importlib.util.cache_from_source(m.__file__)) "
        "for m in mods))"
    )
    assert run_in_image(docker_client, runner_image, code) == "True"


@pytest.mark.container
def test_cli_build_reports_reuse_as_json(runner_image: str) -> None:
    result = CliRunner().invoke(app, ["runner", "build", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["tag"] == runner_image
    assert body["reused"] is True
    assert body["path_used"] in {"dockerfile", "offline"}
