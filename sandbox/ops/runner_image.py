"""The runner image: the only image that ever reads raw data.

It holds python3, duckdb and pyarrow (the versions installed on the host) and the
executor package ``sandbox_runner`` (runner/sandbox_runner/), in /opt/runner/lib,
with entry point ``python3 -m sandbox_runner``, a non-root user, workdir ``/`` and
precompiled bytecode. Tag: ``jinyu-runner:<content hash>`` (``image_tag()``), where
the hash covers the executor files, the build recipe (runner/Dockerfile,
runner/build/**, the offline recipe ``rootfs.RECIPE``) and the duckdb/pyarrow versions.

Two build paths, picked by ``ensure_image``:

``dockerfile``  runner/Dockerfile on ``python:3.11-slim``; tried only when that base
                image is present locally or a registry answers within seconds.
``offline``     no registry: ``debootstrap --variant=minbase --include=python3``
                from the Debian mirror apt uses, duckdb/pyarrow wheels put in with
                the host's pip, then ``docker import`` (``sandbox.ops.rootfs``). The
                root filesystem and the library directory are cached
                (``default_cache_dir()``), so a rebuild after an executor change only
                copies, compiles and imports.

Both paths end with a smoke test in a container (no network): the libraries import,
the user is not root. See docs/runner-image.md.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sandbox.errors import DockerUnavailable
from sandbox.ops.rootfs import RECIPE, Progress, build_log, build_offline, make_readable

REPOSITORY = "jinyu-runner"
BASE_IMAGE = "python:3.11-slim"
LABEL = "jinyu.runner"
REGISTRY_TIMEOUT_S = 8.0
KEEP_IMAGES = 4  # older jinyu-runner images are removed after a build

SMOKE_TEST = (
    "import os, duckdb, pyarrow, pyarrow.parquet, pyarrow.compute, pyarrow.dataset, "
    "pyarrow.ipc, sandbox_runner; "
    "os.environ['MPLCONFIGDIR'] = '/tmp'; "
    "import pandas, numpy, scipy.stats, statsmodels.api, matplotlib, acro, "
    "sandbox_runner.analysis; "
    "assert os.getuid() != 0, 'runs as root'; "
    "assert duckdb.connect().execute('select 41 + 1').fetchall() == [(42,)]; "
    "print('ok', os.getuid(), duckdb.__version__, pyarrow.__version__)"
)


@dataclass(frozen=True)
class ImageInfo:
    """What ``ensure_image`` did: the tag, which path built it, and whether it was reused."""

    tag: str
    path_used: str  # "dockerfile" | "offline" (from the image's label when reused)
    reused: bool
    size_bytes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_runner_dir() -> Path:
    """runner/ in the source tree (holds Dockerfile, build/ and sandbox_runner/)."""
    here = Path(__file__).resolve().parents[2] / "runner"
    if (here / "sandbox_runner").is_dir():
        return here
    import sandbox_runner  # installed without the source tree: use the package itself

    return Path(sandbox_runner.__file__).resolve().parent.parent


def runner_versions() -> dict[str, str]:
    """The duckdb and pyarrow versions installed on the host (the image gets the same)."""
    return {name: importlib.metadata.version(name) for name in ("duckdb", "pyarrow")}


def content_hash(runner_dir: Path | None = None, *, versions: dict[str, str] | None = None) -> str:
    """SHA-256 over the executor files, the build recipe and the library versions."""
    runner_dir = runner_dir or default_runner_dir()
    digest = hashlib.sha256()
    meta = {"recipe": RECIPE, "versions": versions or runner_versions(), "base": BASE_IMAGE}
    digest.update(json.dumps(meta, sort_keys=True).encode())
    for rel, path in _recipe_files(runner_dir):
        digest.update(b"\0file\0" + rel.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def image_tag(runner_dir: Path | None = None, *, versions: dict[str, str] | None = None) -> str:
    """``jinyu-runner:<16 hex digits of the content hash>``, computed without Docker."""
    return f"{REPOSITORY}:{content_hash(runner_dir, versions=versions)[:16]}"


def ensure_image(
    client: Any,
    *,
    progress: Progress | None = None,
    runner_dir: Path | None = None,
    force: bool = False,
    refresh_cache: bool = False,
    cache_dir: Path | None = None,
) -> ImageInfo:
    """Reuse the runner image for the current content, or build it (either path).

    Builds are serialised with a lock file, so parallel callers build once.
    """
    import docker.errors

    say = progress or (lambda _msg: None)
    started = time.monotonic()
    runner_dir = runner_dir or default_runner_dir()
    versions = runner_versions()
    tag = image_tag(runner_dir, versions=versions)
    found = _existing(client, tag)
    if found is not None and not force:
        return _info(found, tag, reused=True, started=started)
    cache = cache_dir or default_cache_dir()
    with _build_lock(cache, say):
        if not force and (found := _existing(client, tag)) is not None:
            return _info(found, tag, reused=True, started=started)
        labels = {LABEL: "1", f"{LABEL}.hash": tag.split(":", 1)[1]}
        path_used = ""
        if _base_image_available(client, say):
            try:
                _build_dockerfile(client, runner_dir, tag, versions, labels, say)
                path_used = "dockerfile"
            except (docker.errors.DockerException, OSError) as exc:
                say(f"Dockerfile build failed ({type(exc).__name__}); using the offline path")
        if not path_used:
            build_offline(
                client,
                runner_dir,
                tag,
                versions,
                {**labels, f"{LABEL}.path": "offline"},
                cache=cache,
                refresh=refresh_cache,
                say=say,
            )
            path_used = "offline"
        _smoke_test(client, tag, build_log(cache, tag), say)
        built = client.images.get(tag)
        if found is not None and found.id != built.id:  # --force left the old one untagged
            with suppress(docker.errors.DockerException):
                client.images.remove(found.id)
        _prune_old(client, tag)
        return _info(built, tag, reused=False, started=started)


def default_cache_dir() -> Path:
    """/var/cache/jinyu for root, else ~/.cache/jinyu (shared by every SANDBOX_HOME)."""
    if os.geteuid() == 0:
        return Path("/var/cache/jinyu")
    return Path.home() / ".cache" / "jinyu"


def _recipe_files(runner_dir: Path) -> Iterator[tuple[str, Path]]:
    for sub in ("Dockerfile", "build", "sandbox_runner"):
        root = runner_dir / sub
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            if "__pycache__" in path.parts or path.suffix in {".pyc", ".pyo"}:
                continue
            yield path.relative_to(runner_dir).as_posix(), path


def _existing(client: Any, tag: str) -> Any | None:
    import docker.errors

    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.DockerException as exc:
        raise DockerUnavailable(
            "The Docker engine did not answer an image lookup.",
            hint="Check the engine with `docker info`.",
        ) from exc


def _info(image: Any, tag: str, *, reused: bool, started: float) -> ImageInfo:
    labels = image.attrs.get("Config", {}).get("Labels") or {}
    return ImageInfo(
        tag=tag,
        path_used=labels.get(f"{LABEL}.path", "unknown"),
        reused=reused,
        size_bytes=int(image.attrs.get("Size", 0)),
        seconds=round(time.monotonic() - started, 2),
    )


def _base_image_available(client: Any, say: Progress) -> bool:
    """True when python:3.11-slim is local, or a registry serves it within seconds."""
    import docker.errors

    try:
        client.images.get(BASE_IMAGE)
        say(f"base image {BASE_IMAGE} is present locally")
        return True
    except docker.errors.DockerException:
        pass
    say(f"asking the registry for {BASE_IMAGE} (at most {REGISTRY_TIMEOUT_S:.0f} s)")
    saved = client.api.timeout
    client.api.timeout = REGISTRY_TIMEOUT_S  # the engine may wait long on DNS/TCP
    try:
        client.api.inspect_distribution(BASE_IMAGE)
    except Exception:  # noqa: BLE001 - any failure means "no registry": go offline
        say("no registry answers; using the offline path")
        return False
    finally:
        client.api.timeout = saved
    say(f"pulling {BASE_IMAGE}")
    try:
        repo, _, version = BASE_IMAGE.partition(":")
        client.images.pull(repo, tag=version)
    except docker.errors.DockerException:
        say("pull failed; using the offline path")
        return False
    return True


def _build_dockerfile(
    client: Any,
    runner_dir: Path,
    tag: str,
    versions: dict[str, str],
    labels: dict[str, str],
    say: Progress,
) -> None:
    say("building runner/Dockerfile")
    with tempfile.TemporaryDirectory(prefix="jinyu-runner-ctx-") as ctx:
        context = Path(ctx)
        shutil.copy2(runner_dir / "Dockerfile", context / "Dockerfile")
        shutil.copytree(runner_dir / "build", context / "build")
        shutil.copytree(
            runner_dir / "sandbox_runner",
            context / "sandbox_runner",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        make_readable(context)
        client.images.build(
            path=str(context),
            tag=tag,
            rm=True,
            forcerm=True,
            pull=False,
            buildargs={
                "BASE_IMAGE": BASE_IMAGE,
                "DUCKDB_VERSION": versions["duckdb"],
                "PYARROW_VERSION": versions["pyarrow"],
                "RUNNER_UID": str(RECIPE["uid"]),
            },
            labels={**labels, f"{LABEL}.path": "dockerfile"},
        )


def _smoke_test(client: Any, tag: str, log: Path, say: Progress) -> None:
    import docker.errors

    say("smoke test: importing the libraries in a container with no network")
    try:
        out = client.containers.run(
            tag,
            entrypoint=["python3", "-c", SMOKE_TEST],
            network_mode="none",
            labels={"jinyu.sandbox": "1"},
            remove=True,
            stdout=True,
            stderr=True,
        )
    except docker.errors.DockerException as exc:
        stderr = getattr(exc, "stderr", None) or b""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out_log:
            out_log.write(b"$ smoke test\n" + stderr + b"\n")
        with suppress(docker.errors.DockerException):
            client.images.remove(tag, force=True)
        raise DockerUnavailable(
            "The runner image was built but failed its smoke test; it was removed.",
            hint=f"See {log}; fix the cause and run `sandbox runner build` again.",
        ) from exc
    say("smoke test passed: " + out.decode(errors="replace").strip())


def _prune_old(client: Any, keep_tag: str) -> None:
    """Remove older runner images (keep the newest few; never force one in use)."""
    import docker.errors

    images = client.images.list(filters={"label": f"{LABEL}=1"})
    images.sort(key=lambda image: image.attrs.get("Created", ""), reverse=True)
    for image in images[KEEP_IMAGES:]:
        for old in image.tags:
            if old != keep_tag and old.startswith(REPOSITORY + ":"):
                with suppress(docker.errors.DockerException):
                    client.images.remove(old)


@contextmanager
def _build_lock(cache: Path, say: Progress) -> Iterator[None]:
    import fcntl

    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "build.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("another build is running; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
