"""The offline path of the runner image: a Debian root filesystem, no registry.

``debootstrap --variant=minbase --include=python3`` from the Debian mirror apt uses
(``debian_mirror``), stripped; duckdb/pyarrow wheels for the image's Python put in
with the host's pip; the executor package copied and compiled in a chroot; then
``docker import``. The root filesystem and the library directory are cached
(``sandbox.ops.runner_image.default_cache_dir()``), keyed by ``RECIPE``, so a
rebuild after an executor change only copies, compiles and imports. Needs root.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sandbox_runner.contract import RUNNER_UID

from sandbox.errors import DockerUnavailable

Progress = Callable[[str], None]

KEEP_CACHES = 3  # cached rootfs/library directories kept per kind (the newest)
ANALYSIS_REQUIREMENTS = "build/analysis-requirements.txt"


def analysis_requirements(runner_dir: Path) -> Path:
    """The pinned analysis libraries (acro, pandas, statsmodels, …) baked into the image."""
    return runner_dir / ANALYSIS_REQUIREMENTS


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


def build_offline(
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
    log = build_log(cache, tag)
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
        make_readable(lib / "sandbox_runner")
        _compile_in(work, RECIPE["lib"] + "/sandbox_runner", log, say)
        say("packing and importing the image (docker import)")
        _run(["tar", "--numeric-owner", "-C", str(work), "-cf", str(tarball), "."], log, say)
        repository, _, version = tag.partition(":")
        changes = [
            f"USER {RECIPE['uid']}:{RECIPE['uid']}",
            f"WORKDIR {RECIPE['workdir']}",
            *(f"ENV {key}={value}" for key, value in RECIPE["env"].items()),
            "ENTRYPOINT " + json.dumps(RECIPE["entrypoint"]),
            *(f"LABEL {key}={value}" for key, value in labels.items()),
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
        others = sorted(
            (p for p in current.parent.iterdir() if p != current),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        for stale in others[KEEP_CACHES - 1 :]:  # other worktrees may still build these
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
        from sandbox.ops.engine import apt_install

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
            hint="Update RECIPE in sandbox/ops/rootfs.py to a matching suite.",
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
    analysis = analysis_requirements(runner_dir)
    key = hashlib.sha256(
        json.dumps([versions, RECIPE["python"], RECIPE["platforms"], base.name]).encode()
        + strip_script.read_bytes()
        + analysis.read_bytes()
    ).hexdigest()[:12]
    final = cache / "pylib" / f"cp{RECIPE['python'].replace('.', '')}-{key}"
    if final.is_dir() and not refresh:
        say("reusing the cached duckdb/pyarrow/analysis libraries")
        return final
    work = cache / "work" / f"pylib-{key}"
    _reset(work)
    try:
        _run(["cp", "-a", "--link", str(base), str(work)], log, say)
        lib = work / RECIPE["lib"].lstrip("/")
        lib.parent.mkdir(parents=True, exist_ok=True)
        pins = [f"{name}=={version}" for name, version in sorted(versions.items())]
        say("pip: " + " ".join(pins) + f" + {analysis.name} for Python {RECIPE['python']}")
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
                "-r",
                str(analysis),
            ],
            log,
            say,
        )
        _run([sys.executable, str(strip_script), str(lib)], log, say)
        make_readable(lib)
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


def make_readable(root: Path) -> None:
    """Root owns the files in the image; the runner user must read them (umask 077 hosts)."""
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod(mode | (0o555 if path.is_dir() else 0o444))


def build_log(cache: Path, tag: str) -> Path:
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
