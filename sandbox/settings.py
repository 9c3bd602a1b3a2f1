"""Settings, declared once: name, default, help.

Read from the environment only at the edge (``Settings.from_env()`` in the CLI and
the server start-up) and passed into the engine as an explicit object. docs/settings.md
is generated from ``FIELDS`` (``sandbox settings``). Limits here are the bureau's;
nothing an operator sends can change them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_HOME = Path.home() / ".local" / "share" / "jinyu-sandbox"


def _field(default: Any, env: str, help: str) -> Any:
    return field(default=default, metadata={"env": env, "help": help})


@dataclass(frozen=True)
class Settings:
    home: Path = _field(DEFAULT_HOME, "SANDBOX_HOME", "Where state lives: database, keys, data.")
    policies: Path = _field(Path("policies"), "SANDBOX_POLICIES", "Directory of policy files.")
    database_url: str = _field(
        "",
        "SANDBOX_DATABASE_URL",
        "The control-plane database: empty for SQLite at HOME/sandbox.db, or a "
        "postgresql:// URL (needs the [postgres] extra) that several servers share.",
    )
    data_root: Path | None = _field(
        None, "SANDBOX_DATA_ROOT", "Root of the raw Parquet files (default: HOME/data)."
    )
    host: str = _field("127.0.0.1", "SANDBOX_HOST", "Address the server listens on.")
    port: int = _field(8000, "SANDBOX_PORT", "Port the server listens on.")
    executor: str = _field("docker", "SANDBOX_EXECUTOR", "docker (raw data) or local (synthetic).")
    runner_image: str = _field(
        "", "SANDBOX_RUNNER_IMAGE", "Runner image tag (default: the content-hashed tag)."
    )
    concurrency: int = _field(2, "SANDBOX_CONCURRENCY", "Jobs that run at once.")
    analysis_slots: int = _field(
        1,
        "SANDBOX_ANALYSIS_SLOTS",
        "Analysis jobs (scripts) that run at once, in their own lane beside the "
        "SANDBOX_CONCURRENCY SQL jobs: a script never holds or delays a SQL job's slot.",
    )
    lease_s: float = _field(
        30.0,
        "SANDBOX_LEASE_SECONDS",
        "A server renews its lease on its jobs every third of this; one silent for this "
        "long is taken for dead and another server takes its unfinished jobs over.",
    )
    job_timeout_s: float = _field(120.0, "SANDBOX_JOB_TIMEOUT", "Wall-clock limit of one run.")
    release_timeout_s: float = _field(
        60.0,
        "SANDBOX_RELEASE_TIMEOUT",
        "Host time limit on noising one result (category release_timeout past it). The "
        "work is bounded by runner_max_rows; measured well below this (docs/security.md).",
    )
    memory_mb: int = _field(
        2048,
        "SANDBOX_MEMORY_MB",
        "Memory limit of a runner (no swap). Split between DuckDB, its spill, the "
        "interpreter and the result (sandbox/executors/budget.py).",
    )
    cpus: float = _field(2.0, "SANDBOX_CPUS", "CPU limit of a runner.")
    pids: int = _field(64, "SANDBOX_PIDS", "Process/thread limit of a runner.")
    scratch_mb: int = _field(
        256,
        "SANDBOX_SCRATCH_MB",
        "Size of the runner's scratch tmpfs (DuckDB's spill). Its pages count against "
        "memory_mb: the spill is capped within that limit too.",
    )
    output_max_bytes: int = _field(
        16 * 1024 * 1024, "SANDBOX_OUTPUT_MAX_BYTES", "Largest result a runner may return."
    )
    runner_max_rows: int = _field(
        2_000_000,
        "SANDBOX_RUNNER_MAX_ROWS",
        "Most exact groups a runner returns; a larger result is cut (by a fixed order of "
        "its keys), never failed. Far above the groups a query may release.",
    )
    file_size_mb: int = _field(256, "SANDBOX_FILE_SIZE_MB", "Largest file a runner may write.")
    warm_runners: int = _field(
        0,
        "SANDBOX_WARM_RUNNERS",
        "Runner containers started ahead (per dataset set), each for one job; 0: none. "
        "`sandbox serve` and `sandbox up` use 2 unless this is set.",
    )
    max_body_bytes: int = _field(
        1024 * 1024, "SANDBOX_MAX_BODY_BYTES", "Largest request body the API accepts."
    )
    rate_per_minute: int = _field(120, "SANDBOX_RATE_PER_MINUTE", "Requests per minute per token.")
    explain_per_minute: int = _field(
        30, "SANDBOX_EXPLAIN_PER_MINUTE", "Explain requests per minute per token."
    )
    compile_seconds_per_minute: float = _field(
        10.0,
        "SANDBOX_COMPILE_SECONDS_PER_MINUTE",
        "Seconds of query compilation (explain and submit) per token per minute.",
    )
    checkpoint_every: int = _field(
        256,
        "SANDBOX_CHECKPOINT_EVERY",
        "Sign an audit checkpoint every N events (and always after a job's final transition).",
    )
    audit_witness_file: Path | None = _field(
        None,
        "SANDBOX_AUDIT_WITNESS_FILE",
        "Append every audit checkpoint (a JSON line) to this file; it must be outside HOME.",
    )
    audit_witness_url: str = _field(
        "", "SANDBOX_AUDIT_WITNESS_URL", "POST every audit checkpoint (JSON) to this URL."
    )
    server_url: str = _field(
        "http://127.0.0.1:8000", "SANDBOX_URL", "Server URL used by the CLI client."
    )
    token: str = _field("", "SANDBOX_TOKEN", "Bearer token used by the CLI client.")

    @property
    def data_dir(self) -> Path:
        return self.data_root if self.data_root is not None else self.home / "data"

    @property
    def db_path(self) -> Path:
        return self.home / "sandbox.db"

    @property
    def database(self) -> Path | str:
        """What ``store.connect`` opens: the PostgreSQL URL, or the SQLite file."""
        return self.database_url or self.db_path

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def products_dir(self) -> Path:
        return self.home / "products"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from the environment (and a config file), then explicit overrides."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _convert(f: dataclasses.Field[Any], raw: str) -> Any:
    default: Any = f.default
    if isinstance(default, bool):
        return raw.lower() in {"1", "true", "yes"}
    if isinstance(default, int | float | str):
        return type(default)(raw)
    return Path(raw)


FIELDS = dataclasses.fields(Settings)
