"""``sandbox product verify FILE``: check a downloaded data product with the public key.

A product is ``FILE`` plus ``FILE.manifest.json`` (see sandbox/products.py). The
public key comes from ``--public-key`` (a PEM file: the bureau publishes it at
``GET /v1/keys/products``), else ``$SANDBOX_HOME/keys/products.pub`` on the bureau's
own machine.
"""

from __future__ import annotations

from pathlib import Path

import typer

from sandbox.cli.common import JsonOption, console, handle_errors, print_json

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
    from sandbox.cli.common import settings
    from sandbox.errors import BadInput
    from sandbox.products import verify_files
    from sandbox.signing import key_id, load_public_key

    key_path = public_key or settings(ctx).keys_dir / "products.pub"
    if not key_path.is_file():
        raise BadInput(
            f"No public key at {key_path}.",
            hint="Pass --public-key PEM (the bureau publishes it at GET /v1/keys/products).",
        )
    try:
        key = load_public_key(key_path)
    except ValueError as exc:
        raise BadInput(f"{key_path} is not an Ed25519 public key (PEM).") from exc
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
    }
    if as_json:
        print_json(result)
        return
    console.print(
        f"[bold green]OK[/] {file} is product {result['job']} of {result['operator']} "
        f"(scenario {result['scenario']}), released {result['released']}, signed by key "
        f"{result['key_id']}; approved by {', '.join(result['reviewers']) or 'rule (automatic)'}"
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.add_typer(product_app, name="product")
