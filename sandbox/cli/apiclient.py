"""The CLI's HTTP client of the REST API (``ApiClient``) and where it finds the server.

The server URL and token come from ``--url`` or ``SANDBOX_URL`` / ``SANDBOX_TOKEN``
or, when those are unset, from ``$SANDBOX_HOME/client.json`` (``{"url": …, "token":
…}``; ``sandbox up`` writes it with the demo operator's token). Error answers become
SandboxErrors of the server's one shape. Submissions carry an idempotency key and are
retried with it when the connection fails (docs/api.md, idempotent submissions).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from sandbox.errors import AuthError, BadInput, Refused, SandboxError, SystemFailure
from sandbox.settings import Settings


class ApiClient:
    """A small httpx wrapper that turns error responses into SandboxErrors.

    A request made with ``retry=True`` is sent again, after each of ``retry_delays``,
    when the connection fails (refused, reset, timed out, closed before an answer).
    Only requests that are safe to repeat ask for it: a submission with an
    idempotency key (a repeat finds the job the first made, never a second)."""

    retry_delays: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=timeout,
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, url: str | None = None) -> ApiClient:
        found, token = client_config(settings, url=url)
        return cls(found, token)

    def close(self) -> None:
        """Close the connections kept open between requests."""
        self._http.close()

    def request(self, method: str, path: str, *, retry: bool = False, **kw: Any) -> Any:
        import httpx

        delays = list(self.retry_delays) if retry else []
        while True:
            try:
                resp = self._http.request(method, path, **kw)
                break
            except httpx.HTTPError as exc:
                if delays and isinstance(exc, httpx.TransportError):  # no answer came
                    time.sleep(delays.pop(0))
                    continue
                raise SystemFailure(
                    f"Cannot reach the sandbox server at {self.url}.",
                    code="INTERNAL",
                    hint="Is it running (`sandbox serve`)? Check SANDBOX_URL.",
                ) from exc
        if resp.status_code >= 400:
            raise _error_from(resp)
        return resp

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw).json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=body or {}).json()

    def submit(
        self, body: dict[str, Any], *, idempotency_key: str, path: str = "/v1/jobs"
    ) -> tuple[dict[str, Any], bool]:
        """POST a submission (``/v1/jobs``, or ``/v1/analysis-jobs``) with the key,
        retried on connection failures (each retry with the same key): (the job,
        whether the server answered with a replay)."""
        from sandbox.service.idempotency import HEADER, REPLAYED_HEADER, header_value

        headers = {HEADER: header_value(idempotency_key)}
        resp = self.request("POST", path, retry=True, json=body, headers=headers)
        job: dict[str, Any] = resp.json()
        return job, resp.headers.get(REPLAYED_HEADER) == "true"

    def download(
        self, path: Path, product: str, manifest: str, params: dict[str, str] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """GET a released product into ``path`` and its signed manifest beside it
        (``<path>.manifest.json``): (the signed manifest, a summary of what was written)."""
        data = self.request("GET", product, params=params).content
        signed: dict[str, Any] = self.get(manifest, params=params)
        path.write_bytes(data)
        manifest_path = path.with_name(path.name + ".manifest.json")
        manifest_path.write_text(json.dumps(signed, ensure_ascii=False, indent=2) + "\n")
        summary = {
            "file": str(path),
            "manifest": str(manifest_path),
            "bytes": len(data),
            "sha256": signed["manifest"]["result"]["sha256"],
        }
        return signed, summary


def _error_from(resp: Any) -> SandboxError:
    try:
        err = resp.json()["error"]
        code, message, hint = str(err["code"]), str(err["message"]), str(err.get("hint", ""))
        extra = {k: v for k, v in err.items() if k not in ("code", "message", "hint")}
    except (ValueError, KeyError, TypeError):
        code, message, hint, extra = "INTERNAL", f"The server answered {resp.status_code}.", "", {}
    from sandbox.errors import CODES

    if code not in CODES:
        code = "INTERNAL" if resp.status_code >= 500 else "BAD_REQUEST"
    cls: type[SandboxError] = SystemFailure if resp.status_code >= 500 else Refused
    if resp.status_code == 401:
        cls = AuthError
    return cls(message, code=code, hint=hint, http_status=resp.status_code, details=extra)


def client_config(settings: Settings, *, url: str | None = None) -> tuple[str, str]:
    """(url, token): ``url`` (``--url``) or the environment first, then
    $SANDBOX_HOME/client.json."""
    url = url or os.environ.get("SANDBOX_URL", "")
    token = os.environ.get("SANDBOX_TOKEN", "") or settings.token
    path = settings.home / "client.json"
    if (not url or not token) and path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise BadInput(f"{path} is not valid JSON.") from exc
        url = url or str(saved.get("url", ""))
        token = token or str(saved.get("token", ""))
    url = url or settings.server_url
    if not token:
        raise AuthError(
            "No API token.",
            hint="Set SANDBOX_TOKEN (from `sandbox token create`) or run `sandbox up`.",
        )
    return url, token
