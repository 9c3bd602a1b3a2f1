"""The ``sandbox`` command line. Each command group lives in a module of its own."""

from __future__ import annotations

from pathlib import Path

import typer

from sandbox.settings import Settings

app = typer.Typer(
    name="sandbox",
    help="Jinyu (晋域): a public-data sandbox where data is usable but not visible.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(
    ctx: typer.Context,
    home: Path = typer.Option(None, "--home", help="State directory (env SANDBOX_HOME)."),
    policies: Path = typer.Option(
        None, "--policies", help="Policy directory (env SANDBOX_POLICIES)."
    ),
    url: str = typer.Option(
        None,
        "--url",
        help="The sandbox server (env SANDBOX_URL). Commands that read state then go "
        "through its API instead of the local home.",
    ),
) -> None:
    from sandbox.cli.common import URL_KEY

    ctx.obj = Settings.from_env(home=home, policies=policies)
    if url:
        ctx.meta[URL_KEY] = url


def _register() -> None:
    from sandbox.cli import (
        analysis,
        audit,
        client,
        dev,
        policy,
        product,
        reference,
        runner,
        server,
    )

    for module in (policy, runner, server, client, product, audit, dev, reference):
        module.register(app)
    analysis.register(app)  # submit-script, script-result (issue 18)


_register()


def main() -> None:
    app()
