"""CLI commands: ``sandbox audit …`` (verify, prove, export, show, checkpoint); it
also registers ``sandbox report`` (sandbox/cli/report.py).

``report``, ``audit show`` and ``audit verify`` (of the log, not of an export file)
go through the server's API when one is configured (``--url`` / ``SANDBOX_URL``, with a
supervisor's or admin's token) and read the local home otherwise; the other commands
work on the local home (the bureau's machine). Each says on stderr which it used.

``sandbox audit verify`` exits 0 when every entry is covered by a signed checkpoint
that verifies, 1 when the log does not verify (``AUDIT_INVALID``; with
``--public-key``, also when no checkpoint verifies at all), 2 when the request was
refused (no such file or key), and 3 (``UNVERIFIED_EXIT``) when the log verifies but
entries after the last signed checkpoint are only hash-chained.
"""

from __future__ import annotations

import getpass
import json
import sys
from pathlib import Path
from typing import Any

import typer

from sandbox.cli.common import (
    JsonOption,
    console,
    handle_errors,
    local_settings,
    print_json,
    server_client,
    settings,
)
from sandbox.errors import BadInput
from sandbox.settings import Settings

audit_app = typer.Typer(
    name="audit",
    help="The tamper-evident audit log: verify, prove, export, show, checkpoint.",
    no_args_is_help=True,
)

UNVERIFIED_EXIT = 3

PublicKeyOption = typer.Option(
    None, "--public-key", help="The bureau's audit public key (PEM); default HOME/keys/audit.pub."
)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the main app."""
    app.add_typer(audit_app, name="audit")
    from sandbox.cli.report import report_command

    app.command("report", help="Supervision report per operator and scenario, with alerts.")(
        report_command
    )


def _conn(s: Settings) -> Any:
    from sandbox import store

    return store.connect(s.database)


def _local_actor() -> str:
    try:
        return "local:" + getpass.getuser()
    except (KeyError, OSError):
        return "local:unknown"


def _audit_key(s: Settings, conn: Any) -> Any:
    """The private audit key; creating it is itself an audited event."""
    from sandbox import audit, signing, store

    key, created = signing.ensure_key(s.keys_dir, "audit")
    if created:
        with store.transaction(conn):
            audit.append(
                conn,
                actor=_local_actor(),
                role="admin",
                action="key.created",
                subject="audit",
                details={"key_id": signing.key_id(key)},
            )
    return key


def _public_key(s: Settings, path: Path | None) -> Any:
    from sandbox import signing

    if path is not None:
        if not path.is_file():
            raise BadInput(f"No public key file at {path}.")
        try:
            return signing.load_public_key(path)
        except ValueError as exc:
            raise BadInput("The public key file is not an Ed25519 PEM public key.") from exc
    pub = s.keys_dir / "audit.pub"
    if pub.is_file():
        return signing.load_public_key(pub)
    if (s.keys_dir / "audit.pem").is_file():
        return signing.ensure_key(s.keys_dir, "audit")[0].public_key()
    raise BadInput(
        "No audit public key found.",
        hint="Pass --public-key, or run 'sandbox audit checkpoint' once.",
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInput(f"Cannot read JSON from {path}.") from exc


@audit_app.command("verify")
@handle_errors
def verify_command(
    ctx: typer.Context,
    export_file: Path = typer.Option(None, "--export", help="Verify an export file instead."),
    public_key: Path = PublicKeyOption,
    trusted: list[Path] = typer.Option(
        [],
        "--checkpoint",
        help="Signed checkpoints kept elsewhere (JSON, or a witness file of JSON lines); "
        "repeatable. SANDBOX_AUDIT_WITNESS_FILE is read too when it exists.",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Recompute every hash, root and signature; exit 1 naming the first problem, 3 if
    entries after the last checkpoint are unverified (see the module docstring)."""
    from sandbox import audit
    from sandbox.audit import read_checkpoints

    if export_file is None and public_key is None and not trusted:
        api = server_client(ctx)
        if api is not None:
            _show_verify(api.get("/v1/audit/verify"), as_json)
            return
    s = local_settings(ctx) if export_file is None else settings(ctx)
    if s.audit_witness_file is not None and s.audit_witness_file.is_file():
        trusted = [*trusted, s.audit_witness_file]
    held = [c for p in trusted for c in read_checkpoints(p)]
    # a key given on purpose is a key held off the host: nothing signed by it is a failure
    strict = public_key is not None
    if export_file is not None:
        if not export_file.is_file():
            raise BadInput(f"No export file at {export_file}.")
        key = _public_key(s, public_key) if public_key is not None else None
        report = audit.verify(export_file, key, trusted_checkpoints=held, require_signed=strict)
    else:
        conn = _conn(s)
        try:
            report = audit.verify(
                conn,
                _public_key(s, public_key),
                trusted_checkpoints=held,
                require_signed=strict,
            )
        finally:
            conn.close()
    if not report.ok:
        assert report.problem is not None
        raise audit.AuditInvalid(
            f"The audit log does not verify: {report.problem.message}",
            hint="Keep the database and its exports as evidence; compare with an export "
            "held off the host.",
            details={"problem": report.problem.to_dict(), "report": report.to_dict()},
        )
    _show_verify(report.to_dict(), as_json)


def _show_verify(report: dict[str, Any], as_json: bool) -> None:
    """Print a verification report (local or the server's); exit as the module says."""
    if not report.get("ok", True):
        from sandbox import audit

        problem = report.get("problem") or {}
        raise audit.AuditInvalid(
            f"The audit log does not verify: {problem.get('message', 'see the report')}",
            hint="Keep the database and its exports as evidence; compare with an export "
            "held off the host.",
            details={"problem": problem, "report": report},
        )
    if as_json:
        print_json(report)
    else:
        unsigned = report.get("unsigned_entries")
        verdict = "[green]ok[/]" if not unsigned else "[yellow]unverified tail[/]"
        console.print(
            f"{verdict} {report['entries']} entries ({report['first_seq']}.."
            f"{report['last_seq']}), {report['checkpoints']} checkpoints, "
            f"{report['roots_checked']} roots recomputed, signed up to "
            f"{report['signed_size']}, key {report['key_id']}"
        )
        for w in report.get("warnings") or []:
            console.print(f"[yellow]warning[/] {w}")
    if report.get("unsigned_entries"):
        raise typer.Exit(UNVERIFIED_EXIT)


@audit_app.command("checkpoint")
@handle_errors
def checkpoint_command(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """Sign a checkpoint of the current tree head now."""
    from sandbox import audit
    from sandbox.audit import check_witness, push_checkpoint

    s = local_settings(ctx)
    check_witness(s.audit_witness_file, s.audit_witness_url, s.home)
    conn = _conn(s)
    try:
        cp = audit.checkpoint(conn, _audit_key(s, conn))
    finally:
        conn.close()
    if s.audit_witness_file is not None or s.audit_witness_url:
        push_checkpoint(cp, file=s.audit_witness_file, url=s.audit_witness_url)
    if as_json:
        print_json(cp)
    else:
        console.print(
            f"checkpoint tree_size={cp['tree_size']} root={cp['root_hash']} key={cp['key_id']}"
        )


@audit_app.command("prove")
@handle_errors
def prove_command(
    ctx: typer.Context,
    seq: int = typer.Argument(..., help="The entry's sequence number."),
    tree_size: int = typer.Option(None, "--tree-size", help="A checkpoint's tree size."),
    as_json: bool = JsonOption,
) -> None:
    """Print an inclusion proof (JSON) of one entry against a signed checkpoint."""
    from sandbox import audit

    conn = _conn(local_settings(ctx))
    try:
        proof = audit.prove(conn, seq, tree_size)
    finally:
        conn.close()
    print_json(proof)


@audit_app.command("verify-proof")
@handle_errors
def verify_proof_command(
    ctx: typer.Context,
    proof_file: Path = typer.Argument(..., help="A proof from 'sandbox audit prove'."),
    public_key: Path = PublicKeyOption,
    as_json: bool = JsonOption,
) -> None:
    """Check an inclusion or consistency proof with the public key alone."""
    from sandbox import audit

    proof = _read_json(proof_file)
    key = _public_key(settings(ctx) if public_key is not None else local_settings(ctx), public_key)
    kind = proof.get("format") if isinstance(proof, dict) else None
    if kind == audit.CONSISTENCY_FORMAT:
        ok = audit.verify_consistency(proof, key)
    else:
        ok = isinstance(proof, dict) and audit.verify_proof(proof, key)
    if not ok:
        raise audit.AuditInvalid("The proof does not verify with this public key.")
    result = {"ok": True, "format": kind}
    if kind == audit.PROOF_FORMAT:
        result.update(seq=proof["seq"], tree_size=proof["tree_size"])
    if as_json:
        print_json(result)
    else:
        console.print(f"[green]ok[/] {kind}")


@audit_app.command("consistency")
@handle_errors
def consistency_command(
    ctx: typer.Context,
    old_size: int = typer.Argument(..., help="Tree size of the older checkpoint."),
    new_size: int = typer.Argument(None, help="Tree size of the newer one (default latest)."),
    as_json: bool = JsonOption,
) -> None:
    """Print a consistency proof (JSON): the older signed tree is a prefix of the newer."""
    from sandbox import audit

    conn = _conn(local_settings(ctx))
    try:
        print_json(audit.prove_consistency(conn, old_size, new_size))
    finally:
        conn.close()


@audit_app.command("export")
@handle_errors
def export_command(
    ctx: typer.Context,
    since: str = typer.Option(None, "--since", help="ISO date or time; entries from then on."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl or csv."),
    out: Path = typer.Option(None, "--out", help="Write to this file (default stdout)."),
    as_json: bool = JsonOption,
) -> None:
    """Export events, every signed checkpoint and the public key, to keep off the host."""
    from sandbox import audit, signing, store

    s = local_settings(ctx)
    conn = _conn(s)
    try:
        key = _audit_key(s, conn)
        audit.checkpoint(conn, key)  # the export ends on a signed tree head
        if out is None:
            summary = audit.export(
                conn, sys.stdout, since=since, fmt=fmt, public_key=key.public_key()
            )
        else:
            tmp = out.with_name(out.name + ".part")
            with tmp.open("w", encoding="utf-8", newline="") as fh:
                summary = audit.export(conn, fh, since=since, fmt=fmt, public_key=key.public_key())
            tmp.replace(out)
        with store.transaction(conn):
            audit.append(
                conn,
                actor=_local_actor(),
                role="admin",
                action="audit.exported",
                details={
                    "since": since,
                    "format": fmt,
                    "entries": summary["entries"],
                    "key_id": signing.key_id(key),
                },
            )
    finally:
        conn.close()
    if out is not None:
        if as_json:
            print_json({**summary, "out": str(out)})
        else:
            console.print(
                f"exported entries {summary['first_seq']}..{summary['last_seq']} and "
                f"{summary['checkpoints']} checkpoints to {out}"
            )


@audit_app.command("show")
@handle_errors
def show_command(
    ctx: typer.Context,
    action: str = typer.Option(None, "--action", help="Only this action (e.g. job.refused)."),
    actor: str = typer.Option(None, "--actor", help="Only this actor."),
    scenario: str = typer.Option(None, "--scenario", help="Only this scenario."),
    limit: int = typer.Option(50, "--limit", help="The newest N entries."),
    show_checkpoints: bool = typer.Option(False, "--checkpoints", help="List checkpoints."),
    as_json: bool = JsonOption,
) -> None:
    """Show audit entries (newest N, oldest first), or the signed checkpoints."""
    from rich.text import Text

    from sandbox import audit
    from sandbox.cli.common import print_table

    api = None if show_checkpoints else server_client(ctx)
    if api is not None:
        params: dict[str, Any] = {"limit": max(1, min(limit, 1000))}
        params.update({k: v for k, v in (("action", action), ("actor", actor)) if v})
        rows = api.get("/v1/audit", params=params)
        shown = [r for r in rows if scenario is None or r.get("scenario") == scenario]
    else:
        conn = _conn(local_settings(ctx))
        try:
            if show_checkpoints:
                cps = audit.checkpoints(conn)
                if as_json:
                    print_json(cps)
                    return
                print_table(
                    ("tree_size", "time", "root_hash", "key_id"),
                    [(str(c["tree_size"]), c["time"], c["root_hash"], c["key_id"]) for c in cps],
                    keep=("tree_size", "time", "key_id"),
                )
                return
            found = audit.events(
                conn,
                action=action,
                actor=actor,
                scenario=scenario,
                limit=max(1, limit),
                newest_first=True,
            )
        finally:
            conn.close()
        shown = [e.to_dict() for e in found]
    shown.reverse()
    if as_json:
        print_json([{k: v for k, v in e.items() if k != "chain_hash"} for e in shown])
        return
    for e in shown:  # one entry: a line of facts, then its details (fits 80 columns)
        facts = [
            str(e["seq"]),
            str(e["time"]).replace("T", " ")[:19],
            f"{e['actor']} ({e['role']})",
            e["action"],
            e["subject"],
            e.get("scenario") or "",
        ]
        line = Text("  ".join(f for f in facts if f), style="bold", overflow="fold")
        console.print(line, highlight=False)
        console.print(Text("    " + _details_text(e.get("details")), overflow="fold"))


def _details_text(details: Any) -> str:
    if isinstance(details, str):
        return details
    return json.dumps(details, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
