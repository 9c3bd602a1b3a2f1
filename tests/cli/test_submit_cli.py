"""`sandbox submit` against a real server: it sends an idempotency key (its own fresh one
by default, --idempotency-key to choose), and when the connection fails it sends the
request again with the same key, so a submission that ran is never run or charged twice."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sandbox.api.app import create_app
from sandbox.cli import app
from sandbox.cli.apiclient import ApiClient
from sandbox.service import Service, issue_token
from sandbox.settings import Settings
from tests.api.api_helpers import serve

SQL = "SELECT industry, COUNT(*) AS n FROM enterprises GROUP BY industry"


class Server:
    def __init__(self, service: Service, url: str, token: str) -> None:
        self.service, self.url, self.token = service, url, token

    def jobs(self) -> list[dict[str, Any]]:
        rows = self.service.conn().execute("SELECT id, idempotency_key FROM jobs ORDER BY rowid")
        return [dict(r) for r in rows]

    def ledger(self) -> list[str]:
        return [r[0] for r in self.service.conn().execute("SELECT job_id FROM ledger_entries")]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory, catalog, policies_dir) -> Path:
    from sandbox.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic-submit")
    generate_synthetic(
        root, catalog, ["enterprises", "divisions"], units=500, seed=11, policies=policies_dir
    )
    return root


@pytest.fixture()
def server(tmp_path: Path, policies_dir: Path, synthetic: Path) -> Iterator[Server]:
    settings = Settings(
        home=tmp_path / "server",
        policies=policies_dir,
        data_root=synthetic,
        executor="local",
        rate_per_minute=10_000,
    )
    service = Service(settings)
    token = issue_token(service, role="operator", subject="op-huaxin")["token"]
    with serve(create_app(settings, service=service, include_console=False)) as url:
        yield Server(service, url, token)
    service.stop()


def submit(tmp: Path, url: str, token: str, *args: str) -> tuple[int, str, str]:
    query = tmp / "q.sql"
    query.write_text(SQL, encoding="utf-8")
    out = CliRunner().invoke(
        app,
        ["--home", str(tmp / "client"), "submit", str(query), "-s", "sme-credit", "-e", "1"]
        + ["--no-wait", *args],
        env={"SANDBOX_URL": url, "SANDBOX_TOKEN": token},
    )
    return out.exit_code, out.stdout, out.stderr


def test_the_flag_reaches_the_server_and_a_rerun_is_the_same_job(
    server: Server, tmp_path: Path
) -> None:
    code, out, err = submit(tmp_path, server.url, server.token, "--idempotency-key", "run-7")
    assert code == 0, err
    (job,) = server.jobs()
    assert job["idempotency_key"] == "run-7" and job["id"] in out
    code, out, err = submit(tmp_path, server.url, server.token, "--idempotency-key", "run-7")
    assert code == 0, err
    assert f"{job['id']} was submitted before with this idempotency key" in err
    code, out, _ = submit(
        tmp_path, server.url, server.token, "--idempotency-key", "run-7", "--json"
    )
    assert code == 0 and json.loads(out)["id"] == job["id"]
    assert server.jobs() == [job] and server.ledger() == [job["id"]]


def test_a_fresh_key_is_sent_by_default(server: Server, tmp_path: Path) -> None:
    for _ in range(2):
        code, out, err = submit(tmp_path, server.url, server.token, "--json")
        assert code == 0, err
    jobs = server.jobs()
    assert len(jobs) == 2 and jobs[0]["idempotency_key"] != jobs[1]["idempotency_key"]
    for j in jobs:
        assert uuid.UUID(j["idempotency_key"]).version == 4


@pytest.mark.parametrize("key", ["", "x" * 129, "caf\u00e9"])
def test_a_bad_key_is_refused_before_anything_is_sent(
    server: Server, tmp_path: Path, key: str
) -> None:
    code, out, _ = submit(tmp_path, server.url, server.token, "--idempotency-key", key, "--json")
    assert code == 2 and json.loads(out)["error"]["code"] == "INVALID_IDEMPOTENCY_KEY"
    assert server.jobs() == []


class DroppingProxy:
    """A TCP relay in front of the server. On its first connection it passes the request
    on and, once the server starts to answer (the job is made by then), closes the
    client's side without a byte of the answer: the server did the work, the client saw
    the connection fail. Later connections are relayed both ways. It keeps what each
    connection sent first, to show the retry carried the same key."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            drop = not self.requests
            threading.Thread(target=self._handle, args=(client, drop), daemon=True).start()

    def _handle(self, client: socket.socket, drop: bool) -> None:
        upstream = socket.create_connection(self.upstream)
        request = _read_request(client)
        self.requests.append(request)
        upstream.sendall(request)
        if drop:
            upstream.recv(1)  # the server is answering: it has made the job
            client.close()
            upstream.close()
            return
        back = threading.Thread(target=_pump, args=(client, upstream), daemon=True)
        back.start()
        _pump(upstream, client)
        back.join(timeout=30)
        client.close()
        upstream.close()

    def close(self) -> None:
        self.sock.close()

    def keys(self) -> list[str]:
        found = []
        for request in self.requests:
            head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "idempotency-key":
                    found.append(value.strip())
        return found


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while chunk := src.recv(65536):
            dst.sendall(chunk)
    for s in (src, dst):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)


def test_a_retry_after_a_dropped_connection_reuses_the_key(server: Server, tmp_path: Path) -> None:
    proxy = DroppingProxy(server.url)
    try:
        code, out, err = submit(tmp_path, proxy.url, server.token)
    finally:
        proxy.close()
    assert code == 0, err
    keys = proxy.keys()
    assert len(keys) == 2 and keys[0] == keys[1]  # the first request and its retry
    (job,) = server.jobs()
    assert keys[0] == f'"{job["idempotency_key"]}"'
    assert "submitted before with this idempotency key" in err  # the retry was a replay
    assert server.ledger() == [job["id"]]


def test_when_the_server_stays_unreachable_the_key_is_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ApiClient, "retry_delays", (0.01, 0.01))
    with socket.create_server(("127.0.0.1", 0)) as s:
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    code, out, _ = submit(tmp_path, closed, "t", "--idempotency-key", "keep-me", "--json")
    assert code == 1
    err = json.loads(out)["error"]
    assert "--idempotency-key keep-me" in err["hint"]
