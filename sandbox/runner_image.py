"""The runner image: the only image that ever reads raw data.

It holds python3, duckdb and pyarrow (the versions installed on the host) and the
executor package ``sandbox_runner`` (runner/sandbox_runner/), in /opt/runner/lib,
with entry point ``python3 -m sandbox_runner``, a non-root user, workdir ``/`` and
precompiled bytecode. Tag: ``jinyu-runner:<content hash>`` (``image_tag()``), where
the hash covers the executor files, the build recipe (runner/Dockerfile,
runner/build/**, the offline recipe below) and the duckdb/pyarrow versions.

Two build paths, picked by ``ensure_image``:

``dockerfile``  runner/Dockerfile on ``python:3.11-slim``; tried only when that base
                image is present locally or a registry answers within seconds.
``offline``     no registry: ``debootstrap --variant=minbase --include=python3``
                from the Debian mirror apt uses, duckdb/pyarrow wheels put in with
                the host's pip, then ``docker import``. The root filesystem and the
                library directory are cached (``default_cache_dir()``), so a rebuild after
                an executor change only copies, compiles and imports.

Both paths end with a smoke test in a container (no network): the libraries import,
the user is not root. See docs/runner-image.md.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sandbox_runner.contract import RUNNER_UID

from sandbox.errors import DockerUnavailable

Progress = Callable[[str], None]

REPOSITORY = "jinyu-runner"
BASE_IMAGE = "python:3.11-slim"
LABEL = "jinyu.runner"
REGISTRY_TIMEOUT_S = 8.0
KEEP_IMAGES = 4  # older jinyu-runner images are removed after a build

# The offline recipe. Every value here goes into the content hash.
RECIPE: dict[str, Any] = {
    "version": 2,
    "suite": "bookworm",
    "variant": "minbase",
    "packages": ["python3"],
    "python": "3.11",
    "platforms": ["manylinux2014_x86_64"]
    + [f"manylinux_2_{minor}_x86_64" for minor in range(17, 37)],
    "uid": RUNNER_UID,
    "user": "runner",
    "lib": "/opt/runner/lib",
    "env": {
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": "/opt/runner/lib",
        "LANG": "C.UTF-8",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    },
    "entrypoint": ["python3", "-m", "sandbox_runner"],
    "workdir": "/",
}
SMOKE_TEST = (
    "import os, duckdb, pyarrow, pyarrow.parquet, pyarrow.compute, pyarrow.dataset, "
    "pyarrow.ipc, sandbox_runner; "
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
    here = Path(__file__).resolve().parent.parent / "runner"
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
            _build_offline(
                client,
                runner_dir,
                tag,
                versions,
                labels,
                cache=cache,
                refresh=refresh_cache,
                say=say,
            )
            path_used = "offline"
        _smoke_test(client, tag, _build_log(cache, tag), say)
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
        _make_readable(context)
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


# --- the offline path -------------------------------------------------------------

STRIP_ROOTFS = (
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/log",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bash-completion",
    "usr/lib/python3.11/test",
    "usr/lib/python3.11/idlelib",
    "usr/lib/python3.11/ensurepip",
    "usr/lib/python3.11/tkinter",
    "usr/lib/python3.11/lib2to3",
    "usr/lib/python3.11/pydoc_data",
    "usr/lib/python3.11/turtledemo",
)


def _build_offline(
    client: Any,
    runner_dir: Path,
    tag: str,
    versions: dict[str, str],
    labels: dict[str, str],
    *,
    cache: Path,
    refresh: bool,
    say: Progress,
) -> None:
    """Debootstrap (cached) + wheels (cached) + executor, then ``docker import``."""
    if os.geteuid() != 0:
        raise DockerUnavailable(
            "The offline runner build needs root (debootstrap and chroot).",
            hint="Run `sudo sandbox runner build`, or make python:3.11-slim available "
            "(`docker load` it) so the Dockerfile path can be used.",
        )
    log = _build_log(cache, tag)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    base = _base_rootfs(cache, refresh=refresh, log=log, say=say)
    pylib = _python_libs(cache, base, runner_dir, versions, refresh=refresh, log=log, say=say)
    work = cache / "work" / tag.split(":", 1)[1]
    tarball = work.with_suffix(".tar")
    try:
        say("assembling the image root filesystem")
        _reset(work)
        _run(["cp", "-a", "--link", str(base), str(work)], log, say)
        (work / "opt" / "runner").mkdir(parents=True, exist_ok=True)
        for directory in (work, work / "opt", work / "opt" / "runner"):
            directory.chmod(0o755)  # whatever the umask, the runner user must traverse
        lib = work / RECIPE["lib"].lstrip("/")
        _run(["cp", "-a", "--link", str(pylib), str(lib)], log, say)
        shutil.copytree(
            runner_dir / "sandbox_runner",
            lib / "sandbox_runner",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        _make_readable(lib / "sandbox_runner")
        _compile_in(work, RECIPE["lib"] + "/sandbox_runner", log, say)
        say("packing and importing the image (docker import)")
        _run(["tar", "--numeric-owner", "-C", str(work), "-cf", str(tarball), "."], log, say)
        repository, _, version = tag.partition(":")
        changes = [
            f"USER {RECIPE['uid']}:{RECIPE['uid']}",
            f"WORKDIR {RECIPE['workdir']}",
            *(f"ENV {key}={value}" for key, value in RECIPE["env"].items()),
            "ENTRYPOINT " + json.dumps(RECIPE["entrypoint"]),
            *(
                f"LABEL {key}={value}"
                for key, value in {**labels, f"{LABEL}.path": "offline"}.items()
            ),
        ]
        try:
            client.api.import_image(
                src=str(tarball), repository=repository, tag=version, changes=changes
            )
        except Exception as exc:  # the SDK raises several kinds here
            raise DockerUnavailable(
                "docker import of the runner root filesystem failed.",
                hint="Check the engine with `docker info` and the free disk space.",
            ) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
        tarball.unlink(missing_ok=True)
    for current in (base, pylib):  # drop caches of older recipes (we hold the build lock)
        for stale in current.parent.iterdir():
            if stale != current:
                shutil.rmtree(stale, ignore_errors=True)


def _base_rootfs(cache: Path, *, refresh: bool, log: Path, say: Progress) -> Path:
    """The stripped Debian minbase + python3 root filesystem, built once per recipe."""
    keyed = {k: RECIPE[k] for k in ("version", "suite", "variant", "packages", "uid", "user")}
    key = hashlib.sha256(json.dumps([keyed, STRIP_ROOTFS], sort_keys=True).encode()).hexdigest()
    final = cache / "rootfs" / f"{RECIPE['suite']}-{key[:12]}"
    if final.is_dir() and not refresh:
        say(f"reusing the cached Debian root filesystem {final}")
        return final
    if shutil.which("debootstrap") is None:
        from sandbox.engine import apt_install

        say("installing debootstrap (apt-get install debootstrap)")
        apt_install(["debootstrap"], progress=say)
    mirror = debian_mirror()
    tmp = final.with_name("." + final.name + ".tmp")
    _reset(tmp)
    say(f"debootstrap {RECIPE['suite']} from {mirror} (about a minute)")
    _run(
        [
            "debootstrap",
            f"--variant={RECIPE['variant']}",
            "--include=" + ",".join(RECIPE["packages"]),
            RECIPE["suite"],
            str(tmp),
            mirror,
        ],
        log,
        say,
        stream=True,
    )
    version = _run(
        ["chroot", str(tmp), "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        log,
        say,
    ).strip()
    if version != RECIPE["python"]:
        raise DockerUnavailable(
            f"The Debian {RECIPE['suite']} python3 is {version}, not {RECIPE['python']}.",
            hint="Update RECIPE in sandbox/runner_image.py to a matching suite.",
        )
    for rel in STRIP_ROOTFS:
        target = tmp / rel
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
            target.mkdir()
    # debootstrap copies the host's name and resolver; Docker supplies /dev and these.
    (tmp / "etc" / "hostname").write_text("runner\n")
    (tmp / "etc" / "resolv.conf").write_text("")
    for node in list((tmp / "dev").iterdir()):
        if node.is_dir() and not node.is_symlink():
            shutil.rmtree(node)
        else:
            node.unlink()
    uid, user = RECIPE["uid"], RECIPE["user"]
    with (tmp / "etc" / "passwd").open("a") as passwd:
        passwd.write(f"{user}:x:{uid}:{uid}:jinyu runner:/nonexistent:/usr/sbin/nologin\n")
    with (tmp / "etc" / "group").open("a") as group:
        group.write(f"{user}:x:{uid}:\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def _python_libs(
    cache: Path,
    base: Path,
    runner_dir: Path,
    versions: dict[str, str],
    *,
    refresh: bool,
    log: Path,
    say: Progress,
) -> Path:
    """duckdb + pyarrow wheels for the image's Python, stripped and precompiled."""
    strip_script = runner_dir / "build" / "strip_pylib.py"
    key = hashlib.sha256(
        json.dumps([versions, RECIPE["python"], RECIPE["platforms"], base.name]).encode()
        + strip_script.read_bytes()
    ).hexdigest()[:12]
    final = cache / "pylib" / f"cp{RECIPE['python'].replace('.', '')}-{key}"
    if final.is_dir() and not refresh:
        say("reusing the cached duckdb/pyarrow libraries")
        return final
    work = cache / "work" / f"pylib-{key}"
    _reset(work)
    try:
        _run(["cp", "-a", "--link", str(base), str(work)], log, say)
        lib = work / RECIPE["lib"].lstrip("/")
        lib.parent.mkdir(parents=True, exist_ok=True)
        pins = [f"{name}=={version}" for name, version in sorted(versions.items())]
        say("pip: " + " ".join(pins) + f" for Python {RECIPE['python']}")
        platforms = [arg for p in RECIPE["platforms"] for arg in ("--platform", p)]
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-compile",
                "--disable-pip-version-check",
                "--target",
                str(lib),
                "--only-binary=:all:",
                "--python-version",
                RECIPE["python"],
                "--implementation",
                "cp",
                "--abi",
                "cp" + RECIPE["python"].replace(".", ""),
                *platforms,
                *pins,
            ],
            log,
            say,
        )
        _run([sys.executable, str(strip_script), str(lib)], log, say)
        _make_readable(lib)
        _compile_in(work, RECIPE["lib"], log, say)
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        lib.rename(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian archive apt uses here (sources.list or deb822 .sources), else deb.debian.org."""
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        for uri in _source_uris(text, deb822=path.suffix == ".sources"):
            if "debian" in uri and "security" not in uri and "ports" not in uri:
                return uri.rstrip("/")
    return "http://deb.debian.org/debian"


def _source_uris(text: str, *, deb822: bool) -> Iterator[str]:
    if deb822:
        for stanza in text.split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    name, _, value = line.partition(":")
                    fields[name.strip().lower()] = value.strip()
            if (
                "deb" in fields.get("types", "").split()
                and fields.get("enabled", "yes").lower() != "no"
            ):
                yield from fields.get("uris", "").split()
        return
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "deb":
            uris = [p for p in parts[1:] if "://" in p]
            yield from uris[:1]


def _compile_in(rootfs: Path, target: str, log: Path, say: Progress) -> None:
    """Byte-compile with the image's own python3 (right magic number, right paths)."""
    _run(["chroot", str(rootfs), "python3", "-m", "compileall", "-q", target], log, say)


def _make_readable(root: Path) -> None:
    """Root owns the files in the image; the runner user must read them (umask 077 hosts)."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod(mode | (0o555 if path.is_dir() else 0o444))


def _build_log(cache: Path, tag: str) -> Path:
    return cache / "logs" / f"build-{tag.split(':', 1)[1]}.log"


def _reset(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)


def _run(cmd: list[str], log: Path, say: Progress, *, stream: bool = False) -> str:
    """Run a build step; its output goes to the build log (and, if stream, to say)."""
    captured: list[str] = []
    with (
        log.open("a") as out,
        subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive"),
        ) as proc,
    ):
        out.write("$ " + " ".join(cmd) + "\n")
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            captured.append(line)
            if stream and line.startswith("I: "):
                say("  " + line[3:].strip())  # indented: a detail, not a step
        code = proc.wait()
    if code != 0:
        raise DockerUnavailable(
            f"Runner build step `{Path(cmd[0]).name}` failed (exit {code}).",
            hint=f"See the build log {log}.",
        )
    return "".join(captured)
