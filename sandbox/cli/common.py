"""What every CLI command shares: settings from the context, output, error handling,
and where state is read from.

Every command that prints a result accepts ``--json``. Exit codes: 0 success,
2 refused (bad query, no grant, no budget, bad input), 1 the system failed. Errors
print the one error shape (see sandbox.errors) and never a stack trace.

Server or local. A command that reads the sandbox's state (``report``, ``audit show``,
``audit verify``, ``product verify`` …) goes through the server's API when one is
configured (``--url`` or ``SANDBOX_URL``: ``configured_url``) and reads the local home
otherwise; either way it says which on stderr (``say_source``), so figures from one
sandbox are never taken for another's.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
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


URL_KEY = "sandbox.url"  # ctx.meta: the --url given to the main command


def configured_url(ctx: typer.Context) -> str | None:
    """The server a command must use: ``--url``, else ``SANDBOX_URL``; None for none."""
    url = ctx.find_root().meta.get(URL_KEY) or os.environ.get("SANDBOX_URL", "")
    return str(url).rstrip("/") or None


def say_source(text: str) -> None:
    """Say on stderr, dimmed, where a command's figures come from."""
    err_console.print(f"[dim]{escape(text)}[/]", highlight=False, soft_wrap=True)


def say_local(s: Settings, *, ignored_url: str | None = None) -> None:
    """ "local home …"; with ``ignored_url``, that the command does not use the server."""
    note = f" (this command does not use the server at {ignored_url})" if ignored_url else ""
    say_source(f"local home {s.home}{note}")


def server_client(ctx: typer.Context) -> Any:
    """The API client when a server is configured (said on stderr), else None."""
    url = configured_url(ctx)
    if url is None:
        return None
    from sandbox.cli.apiclient import ApiClient

    api = ApiClient.from_settings(settings(ctx), url=url)
    ctx.call_on_close(api.close)
    say_source(f"via {api.url}")
    return api


def local_settings(ctx: typer.Context) -> Settings:
    """The local home's settings, said on stderr (with a configured server it ignores)."""
    s = settings(ctx)
    say_local(s, ignored_url=configured_url(ctx))
    return s


def make_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    keep: Iterable[str] = (),
    right: Iterable[str] = (),
) -> Any:
    """A table that fits the terminal without cutting what must stay whole: the
    ``keep`` columns (ids, states) are never wrapped nor shortened (each is as wide as
    its longest line); the others wrap, and a word too long for its column folds onto
    the next line rather than ending in "…"."""
    from rich import box
    from rich.cells import cell_len
    from rich.table import Table
    from rich.text import Text

    body = [list(r) for r in rows]
    keep, right = set(keep), set(right)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    for i, h in enumerate(headers):
        if h in keep:
            lines = [h, *(ln for r in body for ln in str(r[i]).splitlines())]
            width = max(cell_len(ln) for ln in lines)
            table.add_column(h, no_wrap=True, min_width=width, overflow="fold")
        else:
            table.add_column(h, overflow="fold", justify="right" if h in right else "left")
    for r in body:
        table.add_row(*(Text(str(c)) for c in r))  # cells are text, never markup
    return table


def print_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    keep: Iterable[str] = (),
    right: Iterable[str] = (),
) -> None:
    console.print(make_table(headers, rows, keep=keep, right=right))


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
