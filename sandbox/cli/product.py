"""``sandbox product verify FILE``: check a downloaded data product with the public key.

A product is ``FILE`` plus ``FILE.manifest.json`` (see sandbox/products.py). The
public key comes from ``--public-key`` (a PEM file: the bureau publishes it at
``GET /v1/keys/products``); without it, from that endpoint of the configured server
(``--url`` / ``SANDBOX_URL``), else ``$SANDBOX_HOME/keys/products.pub`` on the bureau's
own machine. The command says on stderr which key it used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from sandbox.cli.common import JsonOption, console, handle_errors, print_json, say_source

product_app = typer.Typer(help="Data products (数据产品).", no_args_is_help=True)


@product_app.command("verify")
@handle_errors
def verify(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="The result file (its manifest is FILE.manifest.json)."),
    public_key: Path = typer.Option(
        None, "--public-key", "-k", help="The bureau's products public key (PEM)."
    ),
    manifest: Path = typer.Option(None, "--manifest", help="The manifest, if not beside FILE."),
    as_json: bool = JsonOption,
) -> None:
    """Check a product's signature and hash; exit 0 if it is authentic, 2 if not."""
    from sandbox.products import verify_files
    from sandbox.signing import key_id

    key, source = _public_key(ctx, public_key)
    say_source(source)
    m = verify_files(file, key, manifest)
    result = {
        "ok": True,
        "file": str(file),
        "key_id": key_id(key),
        "job": m.get("job"),
        "operator": m.get("operator"),
        "scenario": m.get("scenario"),
        "released": (m.get("times") or {}).get("released"),
        "sha256": m["result"]["sha256"],
        "privacy_loss": m.get("privacy_loss"),
        "reviewers": [r.get("reviewer") for r in m.get("reviewers", [])],
        "key_source": source,
    }
    if as_json:
        print_json(result)
        return
    console.print(
        f"[bold green]OK[/] {file} is product {result['job']} of {result['operator']} "
        f"(scenario {result['scenario']}), released {result['released']}, signed by key "
        f"{result['key_id']}; approved by {', '.join(result['reviewers']) or 'rule (automatic)'}"
    )


def _public_key(ctx: typer.Context, path: Path | None) -> tuple[Any, str]:
    """(the products public key, where it came from)."""
    from sandbox.cli.common import configured_url, settings
    from sandbox.errors import BadInput
    from sandbox.signing import load_public_key

    url = configured_url(ctx)
    if path is None and url is not None:
        from sandbox.cli.apiclient import ApiClient

        api = ApiClient(url, "")  # the key is public: no token
        try:
            pem = api.request("GET", "/v1/keys/products").content
        finally:
            api.close()
        try:
            return load_public_key(bytes(pem)), f"products key via {url}/v1/keys/products"
        except ValueError as exc:
            raise BadInput(f"{url} did not answer with an Ed25519 public key (PEM).") from exc
    key_path = path or settings(ctx).keys_dir / "products.pub"
    if not key_path.is_file():
        raise BadInput(
            f"No public key at {key_path}.",
            hint="Pass --public-key PEM, or --url / SANDBOX_URL to fetch it from the server "
            "(GET /v1/keys/products).",
        )
    try:
        key = load_public_key(key_path)
    except ValueError as exc:
        raise BadInput(f"{key_path} is not an Ed25519 public key (PEM).") from exc
    where = "" if path is not None else f" (local home {settings(ctx).home})"
    return key, f"products key {key_path}{where}"


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.add_typer(product_app, name="product")
