"""What every CLI command shares: settings from the context, output, error handling.

Every command that prints a result accepts ``--json``. Exit codes: 0 success,
2 refused (bad query, no grant, no budget, bad input), 1 the system failed. Errors
print the one error shape (see sandbox.errors) and never a stack trace.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from sandbox.errors import SandboxError, public_error
from sandbox.settings import Settings

console = Console()
err_console = Console(stderr=True)

JsonOption = typer.Option(False, "--json", help="Print the result as JSON.")

F = TypeVar("F", bound=Callable[..., Any])


def settings(ctx: typer.Context) -> Settings:
    """The Settings the main callback built from the environment and global options."""
    root = ctx.find_root()
    if not isinstance(root.obj, Settings):
        root.obj = Settings.from_env()
    return root.obj


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


def fail(exc: BaseException, as_json: bool) -> None:
    """Print the error in the one shape and exit with its code."""
    err = public_error(exc)
    if as_json:
        print_json(err.to_dict())
    else:
        # the text is not markup: a hint may quote what the user typed (a key, a path)
        err_console.print(f"[bold red]error[/] \\[{err.code}] {escape(err.message)}")
        if err.hint:
            err_console.print(f"[dim]hint:[/] {escape(err.hint)}")
    raise typer.Exit(err.exit_code)


def handle_errors(fn: F) -> F:
    """Turn SandboxError (and anything else) into the error shape and exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except SandboxError as exc:
            fail(exc, bool(kwargs.get("as_json")))
        except Exception as exc:  # noqa: BLE001 - the system failed; show nothing of it
            err_console.print(f"[dim]{type(exc).__name__}[/]") if _debug() else None
            fail(exc, bool(kwargs.get("as_json")))

    return wrapper  # type: ignore[return-value]


def _debug() -> bool:
    import os

    return os.environ.get("SANDBOX_DEBUG") == "1"
