"""CLI commands on the server machine: ``sandbox serve``, ``sandbox up``, ``sandbox token``.

``sandbox up`` is the one set-up command: it makes sure a Docker engine runs (installing
one when it can), builds or reuses the runner image, writes the demo data if it is
missing, issues fresh demo tokens (printed once, with the URL; the demo operator's
token is also written to ``$SANDBOX_HOME/client.json`` for the CLI client), and serves.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import typer

from sandbox.cli.common import JsonOption, console, err_console, handle_errors, print_json
from sandbox.settings import Settings

token_app = typer.Typer(help="API tokens (on the server machine).", no_args_is_help=True)

DEMO_LABEL = "demo"
# the demo people: two operators, two supervisors (important data needs two), one admin
DEMO_TOKENS: tuple[tuple[str, str], ...] = (
    ("operator", "op-jinshu"),
    ("operator", "op-huaxin"),
    ("supervisor", "supervisor-li"),
    ("supervisor", "supervisor-wang"),
    ("admin", "admin"),
)


def _settings(ctx: typer.Context) -> Settings:
    from sandbox.cli.common import settings

    return settings(ctx)


def _listen_settings(ctx: typer.Context, host: str | None, port: int | None) -> Settings:
    """The settings with ``--host`` / ``--port`` where given (``serve``, ``up``)."""
    return _settings(ctx).replace(
        **{k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    )


SERVER_WARM_RUNNERS = 2


def serve_app(settings: Settings) -> None:
    """Serve the API with uvicorn on settings.host:port until interrupted."""
    import uvicorn

    from sandbox import logs
    from sandbox.api.app import create_app

    logs.configure()  # JSON lines on stderr: every job failure is one (docs/jobs.md)
    if not os.environ.get("SANDBOX_WARM_RUNNERS"):
        # a served sandbox keeps two containers started ahead: a job then pays no
        # container start (docs/performance.md); each still serves exactly one job
        settings = settings.replace(warm_runners=SERVER_WARM_RUNNERS)
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info", access_log=False)


def _url(settings: Settings) -> str:
    host = settings.host if settings.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
    return f"http://{host}:{settings.port}"


def _say(message: str) -> None:
    err_console.print(f"[dim]·[/] {message}", highlight=False)


def demo_data_missing(settings: Settings) -> list[str]:
    """The demo data files the catalogue names that are not on disk."""
    from sandbox.catalog import load_catalog

    catalog = load_catalog(settings.policies)
    missing = []
    for d in catalog.datasets:
        if not d.grantable:
            continue
        for t in d.tables:
            if not (settings.data_dir / t.file).is_file():
                missing.append(t.file)
    return missing


def issue_demo_tokens(settings: Settings, *, expires_in: str = "30d") -> list[dict[str, Any]]:
    """Revoke the previous demo tokens and issue fresh ones (secrets returned once)."""
    from sandbox import store, tokens
    from sandbox.catalog import load_catalog
    from sandbox.grants import load_grants
    from sandbox.service import issue_token

    grants = load_grants(settings.policies, load_catalog(settings.policies))
    conn = store.connect(settings.database)
    try:
        tokens.revoke_label(conn, DEMO_LABEL)
        return [
            issue_token(
                conn, role=role, subject=who, expires_in=expires_in, grants=grants, label=DEMO_LABEL
            )
            for role, who in DEMO_TOKENS
            if role != "operator" or grants.operator(who) is not None
        ]
    finally:
        conn.close()


def write_client_config(settings: Settings, url: str, token: str) -> Path:
    """$SANDBOX_HOME/client.json: the CLI client's server URL and token (mode 0600)."""
    path = settings.home / "client.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "token": token}, fh, indent=2)
    os.replace(path.with_suffix(".tmp"), path)
    return path


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""

    @app.command("serve")
    @handle_errors
    def serve(
        ctx: typer.Context,
        host: str = typer.Option(None, "--host", help="Listen address (env SANDBOX_HOST)."),
        port: int = typer.Option(None, "--port", help="Port (env SANDBOX_PORT)."),
    ) -> None:
        """Serve the REST API (and the console) on localhost."""
        settings = _listen_settings(ctx, host, port)
        console.print(f"Serving on [bold]{_url(settings)}[/] (state in {settings.home})")
        serve_app(settings)

    @app.command("up")
    @handle_errors
    def up(
        ctx: typer.Context,
        host: str = typer.Option(None, "--host", help="Listen address (env SANDBOX_HOST)."),
        port: int = typer.Option(None, "--port", help="Port (env SANDBOX_PORT)."),
        people: int = typer.Option(300_000, "--people", help="Demo population size."),
        install: bool = typer.Option(
            True, "--install/--no-install", help="Install Docker with apt-get if missing."
        ),
        no_serve: bool = typer.Option(False, "--no-serve", help="Set up, print, do not serve."),
    ) -> None:
        """Set everything up (Docker, runner image, demo data, demo tokens) and serve."""
        import docker

        from sandbox.ops.demo_data import generate_demo_data
        from sandbox.ops.engine import ensure_docker
        from sandbox.ops.runner_image import ensure_image

        settings = _listen_settings(ctx, host, port)
        started = time.monotonic()
        _say("checking the Docker engine")
        ensure_docker(install=install, progress=_say)
        client = docker.from_env(timeout=120)
        try:
            info = ensure_image(client, progress=_say)
        finally:
            client.close()
        _say(f"runner image {info.tag} ({'reused' if info.reused else info.path_used})")
        if demo_data_missing(settings):
            _say(f"writing FABRICATED demo data ({people} people) to {settings.data_dir}")
            generate_demo_data(
                settings.data_dir,
                settings.policies,
                people=people,
                progress=lambda label, done, total: _say(f"  {label}") if done == total else None,
            )
        else:
            _say(f"demo data present in {settings.data_dir}")
        settings = settings.replace(runner_image=settings.runner_image or info.tag)
        issued = issue_demo_tokens(settings)
        url = _url(settings)
        operator = next(t for t in issued if t["role"] == "operator")
        client_file = write_client_config(settings, url, operator["token"])
        console.print()
        took = time.monotonic() - started
        console.print(
            f"[bold green]Jinyu sandbox[/] at [bold]{url}[/]  (API: {url}/v1, "
            f"schema: {url}/openapi.json; set up in {took:.0f} s)"
        )
        console.print("Demo credentials (shown once; valid 30 days; `sandbox up` issues new ones):")
        for t in issued:
            console.print(f"  {t['role']:<10} {t['subject']:<16} {t['token']}", highlight=False)
        console.print(
            f"The CLI client uses the operator token in {client_file}; as a supervisor, run "
            "e.g. [bold]SANDBOX_TOKEN=<supervisor token> sandbox review list[/]."
        )
        if no_serve:
            return
        serve_app(settings)

    @token_app.command("create")
    @handle_errors
    def token_create(
        ctx: typer.Context,
        operator: str = typer.Option(None, "--operator", help="An operator id from grants.yaml."),
        supervisor: str = typer.Option(None, "--supervisor", help="A supervisor's name."),
        admin: str = typer.Option(None, "--admin", help="An admin's name."),
        expires_in: str = typer.Option(None, "--expires-in", help="e.g. 30d, 12h, 2w."),
        as_json: bool = JsonOption,
    ) -> None:
        """Issue a token. It is printed once; only its hash is kept."""
        from sandbox import store
        from sandbox.catalog import load_catalog
        from sandbox.errors import BadInput
        from sandbox.grants import load_grants
        from sandbox.service import issue_token

        chosen = [
            (r, v)
            for r, v in (("operator", operator), ("supervisor", supervisor), ("admin", admin))
            if v
        ]
        if len(chosen) != 1:
            raise BadInput("Give exactly one of --operator, --supervisor, --admin.")
        role, subject = chosen[0]
        settings = _settings(ctx)
        grants = load_grants(settings.policies, load_catalog(settings.policies))
        conn = store.connect(settings.database)
        try:
            record = issue_token(
                conn, role=role, subject=subject, expires_in=expires_in, grants=grants
            )
        finally:
            conn.close()
        if as_json:
            print_json(record)
            return
        console.print(f"{record['token']}", highlight=False)
        err_console.print(
            f"[dim]{record['id']}: {role} {subject}, expires {record['expires_at'] or 'never'}; "
            "shown once, keep it safe[/]"
        )

    @token_app.command("revoke")
    @handle_errors
    def token_revoke(
        ctx: typer.Context,
        token_id: str = typer.Argument(
            ..., help="The token id (tok_…), from `sandbox token list`."
        ),
        as_json: bool = JsonOption,
    ) -> None:
        """Revoke a token at once."""
        from sandbox import store, tokens

        conn = store.connect(_settings(ctx).database)
        try:
            record = tokens.revoke_token(conn, token_id)
        finally:
            conn.close()
        if as_json:
            print_json(record)
        else:
            console.print(f"revoked {record['id']} ({record['role']} {record['subject']})")

    @token_app.command("list")
    @handle_errors
    def token_list(ctx: typer.Context, as_json: bool = JsonOption) -> None:
        """Every token's record (never the secret)."""
        from sandbox import store, tokens
        from sandbox.cli.common import configured_url, print_table, say_local

        s = _settings(ctx)
        say_local(s, ignored_url=configured_url(ctx))
        conn = store.connect(s.database)
        try:
            records = tokens.list_tokens(conn)
        finally:
            conn.close()
        if as_json:
            print_json(records)
            return
        print_table(
            ("id", "role", "for", "created", "expires", "revoked"),
            [
                (
                    r["id"],
                    r["role"],
                    r["subject"],
                    r["created_at"][:16].replace("T", "\n"),
                    (r["expires_at"] or "never")[:16].replace("T", "\n"),
                    (r["revoked_at"] or "")[:16].replace("T", "\n"),
                )
                for r in records
            ],
            keep=("id", "role", "for", "created", "expires"),
        )

    app.add_typer(token_app, name="token")
