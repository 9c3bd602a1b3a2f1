"""The checker of an analysis job: replays the script's ACRO calls in a fresh process.

Issue 18. Started by the supervisor (``sandbox_runner.analysis``) only after every
process of the script is dead, as ``python -I -B`` (no PYTHON* variable, no cwd or
user site on ``sys.path``), with a cwd, HOME, TMPDIR and MPLCONFIGDIR the supervisor
made after the kill, stdin/stdout/stderr on /dev/null. It

1. reads the call log the script's recorder wrote (``analysis_calls``), strictly:
   capped in size, in calls and in argument files; files only of the recorder's
   names, regular, one link, no symlink followed; any method, argument or value the
   recorder would not have written is ``output_invalid``;
2. builds a FRESH ACRO session with the bureau's thresholds and replays every call
   (the same checks as the recorder's first: no callables, no formula beyond column
   names and arithmetic, no ``**kwargs``); a call that fails is ``output_invalid``;
3. finalises into a fresh results directory, the only one the supervisor collects.

So a verdict is ACRO's, computed in a process the script never ran in, on the
inputs the script passed. Exit codes: 0 done; ``EXIT_INVALID``, ``EXIT_TOO_LARGE``,
``EXIT_MEMORY``; nothing is printed.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

EXIT_INVALID = 10
EXIT_TOO_LARGE = 11
EXIT_MEMORY = 12


def read_log(calls_dir: str) -> tuple[int, list[dict[str, Any]]]:
    """(the log directory's fd, its calls): each call checked for form, not decoded."""
    from sandbox_runner import analysis_calls as calls

    try:
        dir_fd = os.open(calls_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise calls.LogInvalid from exc
    try:
        raw = calls.read_regular(calls.LOG_FILE, calls.LOG_MAX_BYTES, dir_fd)
    except calls.LogInvalid:
        if os.path.lexists(os.path.join(calls_dir, calls.LOG_FILE)):
            raise
        return dir_fd, []  # no log: the script ended before the recorder wrote one
    try:
        log = json.loads(raw, parse_constant=_no_constant)
    except ValueError as exc:
        raise calls.LogInvalid from exc
    if not isinstance(log, dict) or set(log) != {"version", "calls"}:
        raise calls.LogInvalid
    if log["version"] != calls.LOG_VERSION or not isinstance(log["calls"], list):
        raise calls.LogInvalid
    if len(log["calls"]) > calls.MAX_CALLS:
        raise calls.LogTooLarge
    for call in log["calls"]:
        if not isinstance(call, dict) or set(call) != {"method", "args", "command"}:
            raise calls.LogInvalid
        if call["method"] not in calls.METHODS or not isinstance(call["args"], dict):
            raise calls.LogInvalid
        if not isinstance(call["command"], str) or len(call["command"]) > calls.TEXT_MAX:
            raise calls.LogInvalid
        if not set(call["args"]) <= calls.METHODS[call["method"]]:
            raise calls.LogInvalid
    return dir_fd, log["calls"]


def _no_constant(name: str) -> Any:
    raise ValueError(name)  # NaN/Infinity are not JSON; the recorder never writes them


def replay(calls_dir: str, thresholds: dict[str, Any], results: str, custom_dir: str) -> None:
    """Replay the log into a fresh session and finalise it into ``results``."""
    from sandbox_runner import analysis_calls as calls

    dir_fd, log = read_log(calls_dir)
    import matplotlib

    matplotlib.use("Agg")
    session = calls.make_session(thresholds)
    decoder = calls.Decoder(dir_fd)
    for n, call in enumerate(log):
        method = call["method"]
        args = {name: decoder.decode(value) for name, value in call["args"].items()}
        try:
            calls.check_call(method, args)
        except TypeError as exc:
            raise calls.LogInvalid from exc
        if method == "custom_output":
            # Never the script's file: a placeholder of our own (custom outputs are
            # refused at collection; only the record's place in the order matters).
            filename = os.path.join(
                custom_dir, f"custom{n}{calls.custom_extension(args['filename'])}"
            )
            with open(filename, "wb"):
                pass
            args["filename"] = filename
        before = set(session.results.results)
        try:
            getattr(session, method)(**args)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - the script's call would have failed too
            raise calls.LogInvalid from exc
        for uid, record in session.results.results.items():
            if uid not in before:
                record.command = call["command"]  # the script's source line, for review
    os.close(dir_fd)
    session.finalise(results, "json")


def main(argv: list[str]) -> int:
    from sandbox_runner import analysis_calls as calls

    with open(argv[0], encoding="utf-8") as fh:
        config = json.load(fh)
    try:
        replay(config["calls"], config["acro"], config["results"], config["custom"])
    except calls.LogTooLarge:
        return EXIT_TOO_LARGE
    except MemoryError:
        return EXIT_MEMORY
    except Exception:  # noqa: BLE001 - a log the recorder would not write
        return EXIT_INVALID
    return 0


def run() -> None:
    """The entry point (``python -I -B -c``): never lets anything reach stderr."""
    try:
        code = main(sys.argv[1:])
    except MemoryError:
        code = EXIT_MEMORY
    except BaseException:  # noqa: BLE001
        code = EXIT_INVALID
    sys.stdout.flush()
    os._exit(code)
