"""The child of an analysis job: runs the operator's script with ACRO, then finalises.

Started by ``sandbox_runner.analysis`` (never by the host), in the container, with
stdout/stderr on /dev/null and cwd a fresh scratch directory. The script sees one
helper module, ``jinyu``:

- ``jinyu.read_table(name)``: a granted table as a pandas DataFrame;
- ``jinyu.tables()``: the names of the granted tables;
- ``jinyu.acro``: the job's ACRO session, configured with the bureau's thresholds
  (``policies/review.yaml``, ``acro:``, per grade). Only what goes through it can
  leave: ``jinyu.acro.crosstab``, ``pivot_table``, ``ols``, ``logit``, ``probit``,
  ``hist``, …; ``jinyu.acro.add_exception(uid, reason)`` asks the reviewer for an
  exception.

After the script, the session is finalised into the directory the supervisor
collects from. Exit 0: done; anything else is ``script_error`` for the supervisor.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import types
from typing import Any


def _session(thresholds: dict[str, Any]) -> Any:
    import acro
    from acro import acro_tables, sdcchecks

    session = acro.ACRO(suppress=False)
    session.config.update(thresholds)
    session.config["federated"] = False
    session.federated = False
    session.sdc_checks = sdcchecks.SDCChecks(session.config)
    if "safe_round_base" in thresholds:
        acro_tables.SAFE_ROUND_BASE = int(thresholds["safe_round_base"])
        session.round_base = int(thresholds["safe_round_base"])
    return session


def _helper(tables: dict[str, str], session: Any) -> types.ModuleType:
    module = types.ModuleType("jinyu", "Jinyu's helpers for analysis scripts.")

    def read_table(name: str) -> Any:
        """A granted table as a pandas DataFrame."""
        import pyarrow.parquet as pq

        if name not in tables:
            raise KeyError(f"table {name!r} is not granted to this job")
        return pq.read_table(tables[name]).to_pandas()

    def table_names() -> list[str]:
        return sorted(tables)

    module.read_table = read_table  # type: ignore[attr-defined]
    module.tables = table_names  # type: ignore[attr-defined]
    module.acro = session  # type: ignore[attr-defined]
    return module


def main(config_path: str) -> int:
    with open(config_path, encoding="utf-8") as fh:
        config = json.load(fh)
    os.unlink(config_path)
    import matplotlib

    matplotlib.use("Agg")
    session = _session(config["acro"])
    sys.modules["jinyu"] = _helper(config["tables"], session)
    sys.path.insert(0, config["script_dir"])  # a small folder: its modules import
    sys.argv = [config["entry"]]
    try:
        runpy.run_path(config["entry"], run_name="__main__")
    except SystemExit as exc:  # sys.exit() / sys.exit(0) end the script normally
        if exc.code not in (None, 0):
            return 1
    session.finalise(config["results"], "json")
    return 0


if __name__ == "__main__":
    try:
        code = main(sys.argv[1])
    except BaseException:  # noqa: BLE001 - the supervisor reports script_error
        code = 1
    sys.stdout.flush()
    os._exit(code)
