"""The Docker engine the runner containers need: check it, start it, install it.

``ensure_docker(install=...)`` is called by the set-up command, the server start-up
and ``sandbox runner build``. It only ever does what a careful administrator would:

1. if the engine socket answers ``GET /_ping``, nothing to do;
2. if ``dockerd`` is installed, start it in the background (we must be root) and
   wait for the socket;
3. if ``install`` and we are root on Debian, ``apt-get install docker.io`` first;
4. otherwise raise DockerUnavailable with the exact commands to run.

The check talks HTTP over the Unix socket itself (no Docker SDK import), so it is
fast and its timeout is ours.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sandbox.errors import DockerUnavailable

DEFAULT_SOCKET = Path("/var/run/docker.sock")
DOCKERD_LOG_CANDIDATES = (Path("/var/log/jinyu-dockerd.log"), Path("/tmp/jinyu-dockerd.log"))  # noqa: S108

Progress = Callable[[str], None]
_STARTED: list[subprocess.Popen[bytes]] = []

_MANUAL_STEPS = (
    "As root on Debian: `apt-get install -y docker.io`, then start the engine with "
    "`nohup dockerd >/var/log/dockerd.log 2>&1 &` (or `systemctl start docker` where "
    "systemd runs), and check it with `docker info`."
)


def ping_socket(socket_path: Path = DEFAULT_SOCKET, *, timeout_s: float = 3.0) -> bool:
    """True when a Docker engine answers ``GET /_ping`` with ``OK`` on the socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(socket_path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
                if len(reply) > 65536:
                    break
    except OSError:
        return False
    head, _, body = reply.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    return len(status) >= 2 and status[1] == b"200" and body.strip() == b"OK"


def ensure_docker(
    *,
    install: bool,
    progress: Progress | None = None,
    socket_path: Path = DEFAULT_SOCKET,
    start: bool = True,
    wait_s: float = 60.0,
) -> None:
    """Make sure a Docker engine answers on ``socket_path``, or raise DockerUnavailable.

    ``start=False`` only checks. A daemon is only started for the standard socket
    (a custom ``socket_path`` names an engine someone else runs).
    """
    say = progress or (lambda _msg: None)
    if ping_socket(socket_path):
        return
    if socket_path.exists() and not os.access(socket_path, os.R_OK | os.W_OK):
        raise DockerUnavailable(
            f"No permission to use the Docker engine socket {socket_path}.",
            hint="Run as root, or add this user to the `docker` group "
            "(`usermod -aG docker $USER`, then log in again).",
        )
    if not start or socket_path != DEFAULT_SOCKET:
        raise DockerUnavailable(
            f"No Docker engine answers on {socket_path}.",
            hint=_hint_for(socket_path),
        )
    if _dockerd_running():
        say("dockerd is running but not answering yet; waiting for it")
        if _wait_for(socket_path, wait_s):
            return
        raise DockerUnavailable(
            f"dockerd is running but {socket_path} did not answer within {wait_s:.0f} s.",
            hint="Look at the dockerd log (`/var/log/jinyu-dockerd.log`), stop the "
            "daemon and start it again: `nohup dockerd >/var/log/dockerd.log 2>&1 &`.",
        )
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        if not install:
            raise DockerUnavailable(
                "Docker is not installed (no `dockerd` on PATH).",
                hint=_MANUAL_STEPS + " Or rerun with the install option as root.",
            )
        _require_root_debian("install Docker")
        say("installing Docker from the Debian packages (apt-get install docker.io)")
        apt_install(["docker.io"], progress=say)
        dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
        if not Path(dockerd).exists():
            raise DockerUnavailable(
                "apt-get installed docker.io but there is no dockerd binary.",
                hint=_MANUAL_STEPS,
            )
    if os.geteuid() != 0:
        raise DockerUnavailable(
            "The Docker engine is installed but not running, and only root can start it.",
            hint="Run `sudo nohup dockerd >/var/log/dockerd.log 2>&1 &` "
            "(or `sudo systemctl start docker`), then try again.",
        )
    log = _start_dockerd(dockerd)
    say(f"started dockerd in the background (log: {log}); waiting for {socket_path}")
    if not _wait_for(socket_path, wait_s):
        raise DockerUnavailable(
            f"dockerd was started but {socket_path} did not answer within {wait_s:.0f} s.",
            hint=f"Read {log} for the reason (common ones: no cgroup mounts, no iptables, "
            "not enough privileges inside a container), fix it, then run "
            f"`nohup dockerd >{log} 2>&1 &` and `docker info`.",
        )
    say("Docker engine is up")


def apt_install(packages: Sequence[str], *, progress: Progress | None = None) -> None:
    """``apt-get update && apt-get install -y PACKAGES`` (root on Debian only)."""
    say = progress or (lambda _msg: None)
    _require_root_debian("install " + " ".join(packages))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
    ):
        say("running " + " ".join(cmd))
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise DockerUnavailable(
                f"`{' '.join(cmd)}` failed (exit {done.returncode}).",
                hint="Check that the Debian package archive is reachable "
                "(`apt-get update`), then install by hand: "
                f"`apt-get install -y {' '.join(packages)}`.",
            )


def _hint_for(socket_path: Path) -> str:
    if socket_path != DEFAULT_SOCKET:
        return (
            f"Check that an engine listens on {socket_path} (`docker -H unix://{socket_path} "
            "info`), or use the standard socket /var/run/docker.sock."
        )
    if shutil.which("dockerd") is None:
        return _MANUAL_STEPS
    return "Start the engine as root: `nohup dockerd >/var/log/dockerd.log 2>&1 &`."


def _require_root_debian(action: str) -> None:
    if os.geteuid() != 0:
        raise DockerUnavailable(
            f"Need root to {action}.", hint="Run the command again as root (or with sudo)."
        )
    if not Path("/etc/debian_version").exists() or shutil.which("apt-get") is None:
        raise DockerUnavailable(
            f"Cannot {action} automatically: this is not a Debian system with apt-get.",
            hint="Install Docker Engine for your system (https://docs.docker.com/engine/"
            "install/), start it, and check it with `docker info`.",
        )


def _dockerd_running() -> bool:
    pidfile = Path("/var/run/docker.pid")
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"dockerd" in cmdline


def _start_dockerd(dockerd: str) -> Path:
    for log in DOCKERD_LOG_CANDIDATES:
        try:
            handle = log.open("ab")
        except OSError:
            continue
        with handle:
            daemon = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                ["nohup", dockerd],
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives our exit, not killed with our group
                close_fds=True,
            )
        _STARTED.append(daemon)  # keep a reference: it outlives this call by design
        return log
    raise DockerUnavailable(
        "Could not open a log file for dockerd.",
        hint="Make /var/log or /tmp writable, or start dockerd by hand.",
    )


def _wait_for(socket_path: Path, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if ping_socket(socket_path, timeout_s=2.0):
            return True
        time.sleep(0.5)
    return False
