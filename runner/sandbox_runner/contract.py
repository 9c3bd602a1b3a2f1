"""The contract between the runner and the host: the one copy both sides import.

The runner (``sandbox_runner.executor``, ``python3 -m sandbox_runner``) and the host's
executors (``sandbox.executors``) agree on what is written here and nothing else:
the spec's version, where files go and what they are called, which failure
categories may come back, the exit codes, the environment variables that carry the
limits, and the runner image's user. Standard library only (it ships in the image).
"""

from __future__ import annotations

from typing import Final

# The spec (``Plan.runner_spec()``): its version, the one the runner accepts.
SPEC_VERSION: Final = 1

# Mount points inside the container (the runner's defaults, the host's mounts).
PLAN_DIR: Final = "/plan"  # read-only: the spec
DATA_DIR: Final = "/data"  # read-only: one directory per dataset of the Plan
OUT_DIR: Final = "/out"  # the result or the status
SCRATCH_DIR: Final = "/scratch"  # DuckDB spill

# File names.
SPEC_FILE: Final = "spec.json"  # in PLAN_DIR; a warm runner waits for it (atomic rename)
RESULT_FILE: Final = "result.arrow"  # in OUT_DIR on success: an Arrow IPC file
STATUS_FILE: Final = "status.json"  # in OUT_DIR always: {"status", "category" | ...}
PART_SUFFIX: Final = ".part"  # a file being written, renamed into place when complete

# Size caps on what each side reads of the other's files.
SPEC_MAX_BYTES: Final = 1024 * 1024  # the runner reads at most this of the spec
STATUS_MAX_BYTES: Final = 4096  # status.json is read with this cap (both sides)

# status.json's "status" values.
STATUS_OK: Final = "ok"
STATUS_FAILED: Final = "failed"

# What may come out of the runner when a job fails: categories, never messages.
# The host (sandbox.errors.CATEGORIES) knows each of these, and a few of its own.
CATEGORIES: Final = (
    "timeout",
    "memory",
    "plan_mismatch",
    "engine_error",
    "output_too_large",
    "resource_limit",
    "data_missing",
    "script_error",
    "output_invalid",
)

# Analysis jobs (issue 18; sandbox_runner.analysis): a spec with "kind": ANALYSIS_KIND.
ANALYSIS_KIND: Final = "analysis"
ANALYSIS_SCRIPT_DIR: Final = "script"  # in PLAN_DIR: the script's files (read-only)
ANALYSIS_MANIFEST: Final = "manifest.json"  # in OUT_DIR: the checked outputs, by the runner
ANALYSIS_FILES_DIR: Final = "files"  # in OUT_DIR: the output files the manifest names
ANALYSIS_MAX_OUTPUTS: Final = 50  # ACRO outputs one job may return
# Its projection step (sandbox_runner.project): a spec with "kind": PROJECT_KIND writes
# each table's usable columns to OUT_DIR/PROJECT_DIR/<n>.parquet, in the spec's order.
PROJECT_KIND: Final = "project"
PROJECT_DIR: Final = "tables"

# Exit codes of ``python3 -m sandbox_runner``.
EXIT_OK: Final = 0  # OUT_DIR/RESULT_FILE is there
EXIT_FAILED: Final = 1  # OUT_DIR/STATUS_FILE holds the failure category
EXIT_CRASHED: Final = 2  # the runner itself could not start
EXIT_IDLE: Final = 3  # a warm runner waited ENV_WAIT_S seconds and no spec came

# Environment variables: the limits the host sets (from Settings), the runner reads.
ENV_MEMORY_LIMIT: Final = "RUNNER_MEMORY_LIMIT"  # DuckDB memory_limit, e.g. "600MB"
ENV_THREADS: Final = "RUNNER_THREADS"
ENV_MAX_TEMP_SIZE: Final = "RUNNER_MAX_TEMP_SIZE"  # DuckDB max_temp_directory_size
ENV_OUTPUT_MAX_BYTES: Final = "RUNNER_OUTPUT_MAX_BYTES"
ENV_WAIT_S: Final = "RUNNER_WAIT_S"  # set: warm mode, wait this long for the spec
# Directory overrides (tests running the runner outside a container).
ENV_PLAN_DIR: Final = "RUNNER_PLAN_DIR"
ENV_OUT_DIR: Final = "RUNNER_OUT_DIR"
ENV_DATA_DIR: Final = "RUNNER_DATA_DIR"
ENV_SCRATCH_DIR: Final = "RUNNER_SCRATCH_DIR"

# The runner image's non-root user (the host forces it, whatever the image says).
RUNNER_UID: Final = 10001
