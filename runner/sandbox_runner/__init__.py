"""The runner: what runs inside the locked-down container (``python3 -m sandbox_runner``).

It depends on the standard library, duckdb and pyarrow only, never on ``sandbox``.
"""
