"""Authentication and authorisation: the principal behind a token, role checks,
ownership checks (someone else's job is "not found"), and issuing tokens."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol, cast

from sandbox import jobs, store, tokens
from sandbox.errors import BadInput, Conflict, Forbidden, NotFound, RateLimited, Refused
from sandbox.grants import Grants
from sandbox.jobs import Job, State
from sandbox.service.ratelimit import RateLimiter
from sandbox.tokens import Principal, Role

OPERATOR = (Role.OPERATOR,)
SUPERVISOR = (Role.SUPERVISOR,)
STAFF = (Role.SUPERVISOR, Role.ADMIN)
ADMIN = (Role.ADMIN,)

# records an audit event: (actor, role, action, **fields)
AuditFn = Callable[..., None]


class TokenIssuer(Protocol):
    """What ``issue_token`` needs of a ``Service``: its connection and its grants."""

    def conn(self) -> store.Connection: ...

    @property
    def grants(self) -> Grants: ...


def authenticate(
    conn: store.Connection,
    token: str | None,
    *,
    client: str,
    rate: RateLimiter,
    failures: RateLimiter,
    audit: AuditFn,
) -> Principal:
    """The caller behind a bearer token, rate-limited per token; failures audited
    (at most as often as ``failures`` allows)."""
    try:
        principal = tokens.authenticate(conn, token or "")
    except Refused:
        try:
            failures.hit("auth.failed")
            audit(
                "anonymous",
                "none",
                "auth.failed",
                details={"reason": "missing" if not token else "invalid", "client": client},
            )
        except RateLimited:
            pass  # a flood of bad tokens is logged at most 10 times a minute
        raise
    rate.hit(principal.token_id)
    return principal


def require(p: Principal, roles: tuple[Role, ...]) -> None:
    """Forbidden unless the principal has one of ``roles``."""
    if p.role not in roles:
        raise Forbidden(
            f"The {p.role.value} role may not do this.",
            hint=f"This needs the {' or '.join(r.value for r in roles)} role.",
        )


def own_job(conn: store.Connection, p: Principal, job_id: str) -> Job:
    """The job if the caller may see it; NotFound otherwise (never Forbidden)."""
    require(p, (Role.OPERATOR, Role.SUPERVISOR))
    job = jobs.get_job(conn, job_id)
    if p.role == Role.OPERATOR and job.operator != p.name:
        raise NotFound(f"No job {job_id!r}.", hint="`sandbox jobs` lists your jobs.")
    return job


def released_job(conn: store.Connection, p: Principal, job_id: str) -> Job:
    """The caller's job (``own_job``) if it is released; Conflict otherwise."""
    from sandbox.jobs.analysis import shown_state

    job = own_job(conn, p, job_id)
    if job.state != State.RELEASED:
        shown = shown_state(job, operator_view=p.role == Role.OPERATOR)
        raise Conflict(
            f"Job {job_id} is {shown.value}; only released jobs have a product.",
            hint="`sandbox status JOB` shows where the job is.",
        )
    return job


def issue_token(
    svc_or_conn: TokenIssuer | store.Connection,
    *,
    role: str,
    subject: str,
    expires_in: str | None = None,
    grants: Grants | None = None,
    label: str = "",
    actor: Principal = tokens.SYSTEM,
) -> dict[str, Any]:
    """Issue a token after checking the role and that an operator is in grants.yaml."""
    try:
        r = Role(role)
    except ValueError as exc:
        raise BadInput(f"Unknown role {role!r}.", hint="operator, supervisor or admin.") from exc
    if store.is_connection(svc_or_conn):
        conn = svc_or_conn
    else:
        issuer = cast(TokenIssuer, svc_or_conn)
        conn, grants = issuer.conn(), issuer.grants
    subject = tokens.principal_id(subject) if subject.strip() else subject
    if r == Role.OPERATOR and grants is not None and grants.operator(subject) is None:
        known = ", ".join(o.id for o in grants.operators)
        raise Refused(
            f"Unknown operator {subject!r}.", code="UNKNOWN_OPERATOR", hint=f"Known: {known}."
        )
    delta: timedelta | None = tokens.parse_duration(expires_in) if expires_in else None
    secret, record = tokens.create_token(
        conn, role=r, subject=subject, expires_in=delta, label=label, actor=actor
    )
    return {"token": secret, **record}
