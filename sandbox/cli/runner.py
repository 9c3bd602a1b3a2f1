"""CLI commands: ``sandbox runner build | tag | engine`` (the runner image and Docker)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from sandbox.cli.common import JsonOption, console, err_console, handle_errors, print_json

runner_app = typer.Typer(
    help="The runner image (the only image that reads raw data) and the Docker engine.",
    no_args_is_help=True,
)

RunnerDirOption = typer.Option(
    None, "--runner-dir", help="Directory holding Dockerfile, build/ and sandbox_runner/."
)


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str], None]]:
    """A spinner with the current step; finished steps are printed with their time."""
    if not enabled:
        yield lambda _msg: None
        return
    started = time.monotonic()
    with err_console.status("starting", spinner="dots") as status:

        def say(message: str) -> None:
            elapsed = time.monotonic() - started
            if not message.startswith(" "):  # indented messages are details of a step
                err_console.print(f"[dim]{elapsed:6.1f}s[/] {message}", highlight=False)
            status.update(f"{message.strip()} …")

        yield say


@runner_app.command("build")
@handle_errors
def build(
    as_json: bool = JsonOption,
    force: bool = typer.Option(False, "--force", help="Rebuild even if the image exists."),
    no_cache: bool = typer.Option(
        False, "--no-cache", help="Also rebuild the cached Debian rootfs and libraries."
    ),
    install: bool = typer.Option(
        False, "--install", help="Install Docker with apt-get if it is missing (root)."
    ),
    runner_dir: Path = RunnerDirOption,
) -> None:
    """Build the runner image, or reuse it when nothing changed. Says which path it used."""
    import docker

    from sandbox.ops.engine import ensure_docker
    from sandbox.ops.runner_image import ensure_image

    with _progress(not as_json) as say:
        ensure_docker(install=install, progress=say)
        client = docker.from_env(timeout=120)
        try:
            info = ensure_image(
                client,
                progress=say,
                runner_dir=runner_dir,
                force=force or no_cache,
                refresh_cache=no_cache,
            )
        finally:
            client.close()
    if as_json:
        print_json(info.to_dict())
        return
    verb = "reused" if info.reused else f"built ({info.path_used} path)"
    console.print(
        f"[bold green]{info.tag}[/] {verb} in {info.seconds:.1f} s, "
        f"{info.size_bytes / 1e6:.0f} MB (path: {info.path_used})"
    )


@runner_app.command("tag")
@handle_errors
def tag(as_json: bool = JsonOption, runner_dir: Path = RunnerDirOption) -> None:
    """Print the runner image tag for the current content (no Docker needed)."""
    from sandbox.ops.runner_image import content_hash, image_tag, runner_versions

    versions = runner_versions()
    result = {
        "tag": image_tag(runner_dir, versions=versions),
        "hash": content_hash(runner_dir, versions=versions),
        "versions": versions,
    }
    if as_json:
        print_json(result)
    else:
        console.print(result["tag"], highlight=False)


@runner_app.command("engine")
@handle_errors
def engine(
    as_json: bool = JsonOption,
    install: bool = typer.Option(
        False, "--install", help="Install Docker with apt-get if it is missing (root)."
    ),
) -> None:
    """Make sure a Docker engine answers: start dockerd, or install it with --install."""
    from sandbox.ops.engine import DEFAULT_SOCKET, ensure_docker

    with _progress(not as_json) as say:
        ensure_docker(install=install, progress=say)
    if as_json:
        print_json({"socket": str(DEFAULT_SOCKET), "ok": True})
    else:
        console.print(f"Docker engine answers on {DEFAULT_SOCKET}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.add_typer(runner_app, name="runner")
