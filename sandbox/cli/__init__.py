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
) -> None:
    ctx.obj = Settings.from_env(home=home, policies=policies)


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
