"""Local development against synthetic data: ``sandbox dev init|run|check``.

An operator's developer has no raw data and often no Docker. These tools give them
the sandbox's own compiler (same code, same error codes), the local executor over
synthetic data generated from the catalogue alone, and the DP layer with the ε they
ask for (and the sandbox's default δ), then the server's output review, so a query
that works locally works in the sandbox and its result has the product's shape.
Nothing here spends budget, writes audit events or talks to a server (except
``dev init --server``, which only fetches the catalogue and grants the token may see).

A local project folder (``dev init``) holds::

    jinyu-project.json   operator, where the catalogue came from, synthetic size/seed
    README.md            what to do next
    policies/            the granted part of the catalogue, the operator's grants,
                         the public key sets, review.yaml (the files the server reads)
    queries/example.sql  a first query, with its header
    data/                synthetic Parquet (marked jinyu.synthetic = true)

A query file may start with a header naming its operator and scenario (and
optionally ε and δ); command-line options win over the header::

    -- operator: op-jinshu
    -- scenario: employment-income

Modules: ``context`` (query headers, the project folder, operator and scenario),
``check`` (``dev check``), ``run`` (``dev run``), ``project`` (``dev init`` and the
synthetic data of a project).
"""

from sandbox.dev.check import check_query, diagnostic, format_diagnostic
from sandbox.dev.context import (
    PROJECT_FILE,
    DevContext,
    find_project,
    load_context,
    parse_header,
    read_query,
    resolve_target,
)
from sandbox.dev.project import example_query, init_project, regenerate_synthetic
from sandbox.dev.run import run_query

__all__ = [
    "DevContext",
    "PROJECT_FILE",
    "check_query",
    "diagnostic",
    "example_query",
    "find_project",
    "format_diagnostic",
    "init_project",
    "load_context",
    "parse_header",
    "read_query",
    "regenerate_synthetic",
    "resolve_target",
    "run_query",
]
