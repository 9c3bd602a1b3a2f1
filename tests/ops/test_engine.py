"""The Docker engine check: answers, clear errors when it does not."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.errors import DockerUnavailable
from sandbox.ops.engine import DEFAULT_SOCKET, ensure_docker, ping_socket


@pytest.fixture()
def fake_socket(tmp_path: Path) -> Iterator[Path]:
    """A Unix socket that answers HTTP, but not as a Docker engine would."""
    path = tmp_path / "fake.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.0 404 Not Found\r\n\r\nnope")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    stop.set()
    thread.join(timeout=2)
    server.close()


def test_ping_is_false_for_a_missing_socket(tmp_path: Path) -> None:
    assert ping_socket(tmp_path / "docker.sock", timeout_s=0.5) is False


def test_ping_is_false_for_a_socket_that_is_not_docker(fake_socket: Path) -> None:
    assert ping_socket(fake_socket, timeout_s=1.0) is False


def test_wrong_socket_path_gives_a_clear_error(tmp_path: Path) -> None:
    wrong = tmp_path / "docker.sock"
    with pytest.raises(DockerUnavailable) as caught:
        ensure_docker(install=False, socket_path=wrong)
    err = caught.value
    assert err.code == "DOCKER_UNAVAILABLE"
    assert err.exit_code == 1
    assert str(wrong) in err.message
    assert f"docker -H unix://{wrong} info" in err.hint
    assert err.to_dict()["error"]["code"] == "DOCKER_UNAVAILABLE"


def test_check_only_never_starts_anything(fake_socket: Path) -> None:
    with pytest.raises(DockerUnavailable) as caught:
        ensure_docker(install=False, socket_path=fake_socket, start=False)
    assert "No Docker engine answers" in caught.value.message


@pytest.mark.container
def test_running_engine_answers(docker_client) -> None:  # type: ignore[no-untyped-def]
    assert ping_socket(DEFAULT_SOCKET) is True
    assert ensure_docker(install=False) is None


# --- starting a daemon, in a private mount namespace -------------------------------
# The real engine is left alone: /var/run and /var/log are fresh tmpfs mounts inside
# `unshare -m`, and a stand-in `dockerd` first on PATH plays the daemon.

FAKE_DOCKERD = """#!{python}
import os, socket, sys, time
time.sleep(1.0)  # a daemon takes a moment before its socket answers
server = socket.socket(socket.AF_UNIX)
server.bind("/var/run/docker.sock")
server.listen(5)
server.settimeout(15)  # exits on its own once the test is done
with open("/var/run/docker.pid", "w") as pid:
    pid.write(str(os.getpid()))
while True:
    try:
        conn, _ = server.accept()
    except OSError:
        sys.exit(0)
    conn.recv(1024)
    conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\nConnection: close\\r\\n\\r\\nOK")
    conn.close()
"""
BROKEN_DOCKERD = "#!/bin/sh\necho 'failed to start daemon' >&2\nexit 1\n"
CHECK = """
import os, signal, time
from sandbox.ops.engine import ensure_docker, ping_socket
from sandbox.errors import DockerUnavailable
assert not ping_socket()
started = time.monotonic()
try:
    ensure_docker(install=False, wait_s=float({wait}))
except DockerUnavailable as exc:
    print("ERROR", exc.message, "|", exc.hint)
else:
    print("UP", round(time.monotonic() - started, 1), ping_socket())
    os.kill(int(open("/var/run/docker.pid").read()), signal.SIGTERM)
print("LOG", open("/var/log/jinyu-dockerd.log").read().strip())
"""


def run_in_namespace(tmp_path: Path, dockerd: str, wait: float) -> str:
    import os
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (a private mount namespace)")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "dockerd").write_text(dockerd.replace("{python}", sys.executable))
    (fake_bin / "dockerd").chmod(0o755)
    script = (
        "mount -t tmpfs tmpfs /var/run && mount -t tmpfs tmpfs /var/log && "
        f'PATH="{fake_bin}:$PATH" exec "{sys.executable}" -c "$0"'
    )
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, CHECK.format(wait=wait)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_starts_dockerd_in_the_background_and_waits(tmp_path: Path) -> None:
    out = run_in_namespace(tmp_path, FAKE_DOCKERD, wait=20)
    assert out.startswith("UP "), out
    assert "True" in out.splitlines()[0]
    assert float(out.split()[1]) >= 1.0  # it really waited for the socket


def test_daemon_that_fails_gives_the_log_and_the_commands(tmp_path: Path) -> None:
    out = run_in_namespace(tmp_path, BROKEN_DOCKERD, wait=2)
    first, log = out.splitlines()[0], out.splitlines()[-1]
    assert first.startswith("ERROR dockerd was started but /var/run/docker.sock did not answer")
    assert "Read /var/log/jinyu-dockerd.log" in first
    assert "nohup dockerd" in first
    assert log == "LOG failed to start daemon"
