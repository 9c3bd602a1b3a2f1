"""The child of an analysis job: runs the operator's script, recording its ACRO calls.

Started by ``sandbox_runner.analysis`` (never by the host), in the container, with
stdout/stderr on /dev/null and cwd a fresh scratch directory. The script sees one
helper module, ``jinyu``:

- ``jinyu.read_table(name)``: a granted table as a pandas DataFrame;
- ``jinyu.tables()``: the names of the granted tables;
- ``jinyu.acro``: a *recorder* in front of an ACRO session configured with the
  bureau's thresholds (``policies/review.yaml``, ``acro:``, per grade). Each
  supported call (``crosstab``, ``pivot_table``, ``ols``, ``logit``, ``probit`` and
  their formula forms, ``hist``, ``pie``, ``surv_func``, ``add_exception``, …;
  ``sandbox_runner.analysis_calls.METHODS``) is written to the call log, its
  arguments as Parquet/JSON (never pickle), and then run on the local session, so
  the script gets ACRO's usual return value. An unsupported argument raises
  ``TypeError``.

Nothing this process's ACRO session decides is ever read: after the script, the
supervisor kills every process left and the *checker* (``analysis_checker``)
replays the log into a fresh session in a fresh process. Exit 0: the log is
complete; anything else is ``script_error`` for the supervisor.
"""

from __future__ import annotations

import json
import linecache
import os
import runpy
import sys
import types
from typing import Any

from sandbox_runner import analysis_calls as calls


class Recorder:
    """``jinyu.acro``: records each supported ACRO call, then makes it locally.

    Any other attribute is the local session's (``print_outputs``, ``results``,
    ``finalise`` …): it works, but it changes nothing in what is checked or leaves.
    """

    def __init__(self, session: Any, log_dir: str) -> None:
        self._session = session
        self._log_dir = log_dir
        self._calls: list[dict[str, Any]] = []
        self._files = 0

    def __getattr__(self, name: str) -> Any:
        if name in calls.METHODS:

            def method(*args: Any, **kwargs: Any) -> Any:
                return self._call(name, args, kwargs)

            method.__name__ = name
            method.__doc__ = getattr(type(self._session), name).__doc__
            return method
        return getattr(self._session, name)

    def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        import inspect

        target = getattr(self._session, name)
        bound = inspect.signature(target).bind(*args, **kwargs)  # TypeError as ACRO would
        given = dict(bound.arguments)
        for param in inspect.signature(target).parameters.values():
            if param.kind is param.VAR_POSITIONAL and not given.get(param.name, ()):
                given.pop(param.name, None)
            if param.kind is param.VAR_KEYWORD and not given.get(param.name, {}):
                given.pop(param.name, None)
        calls.check_call(name, given)
        if len(self._calls) >= calls.MAX_CALLS:
            raise TypeError(f"more than {calls.MAX_CALLS} ACRO calls in one analysis job")
        encoder = calls.Encoder(self._log_dir, self._files)
        encoded = {key: encoder.encode(value) for key, value in given.items()}
        self._files = encoder.next_file
        before = len(self._session.results.results)
        result = target(*args, **kwargs)
        if name == "custom_output" and len(self._session.results.results) == before:
            return result  # ACRO added nothing (no such file): nothing to replay
        self._calls.append({"method": name, "args": encoded, "command": _caller_line()})
        return result

    def _write_log(self) -> None:
        log = {"version": calls.LOG_VERSION, "calls": self._calls}
        path = os.path.join(self._log_dir, calls.LOG_FILE)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(log, fh, allow_nan=False)


def _caller_line() -> str:
    """The script's source line that made the call (ACRO's ``command``, for review)."""
    frame = sys._getframe(3)  # _caller_line <- _call <- method <- the script
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
    return line[: calls.TEXT_MAX]


def _helper(tables: dict[str, str], recorder: Recorder) -> types.ModuleType:
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
    module.acro = recorder  # type: ignore[attr-defined]
    return module


def main(config_path: str) -> int:
    with open(config_path, encoding="utf-8") as fh:
        config = json.load(fh)
    os.unlink(config_path)
    import matplotlib

    matplotlib.use("Agg")
    recorder = Recorder(calls.make_session(config["acro"]), config["calls"])
    sys.modules["jinyu"] = _helper(config["tables"], recorder)
    sys.path.insert(0, config["script_dir"])  # a small folder: its modules import
    sys.argv = [config["entry"]]
    try:
        runpy.run_path(config["entry"], run_name="__main__")
    except SystemExit as exc:  # sys.exit() / sys.exit(0) end the script normally
        if exc.code not in (None, 0):
            return 1
    recorder._write_log()  # noqa: SLF001
    return 0


if __name__ == "__main__":
    try:
        code = main(sys.argv[1])
    except BaseException:  # noqa: BLE001 - the supervisor reports script_error
        code = 1
    sys.stdout.flush()
    os._exit(code)
