"""The server's log: one JSON object per line, on stderr.

``configure()`` is called by ``sandbox serve`` and ``sandbox up``. Every record of the
``sandbox.*`` loggers (and any other library's that reaches the root logger) becomes one
line ``{"ts", "level", "logger", "message", ...fields}``; structured fields are passed as
``log.error("job.failed", extra={"fields": {...}})``.

What a line never holds: an exception's message or a formatted traceback. Third-party
messages quote data (DuckDB puts cell values in its errors), so a failure is described
by :func:`describe` as the exception's type and its traceback's frames
(``file:line:function``) only, for the exception and each cause it was raised from.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

MAX_FRAMES = 40  # per exception, the innermost kept
MAX_CAUSES = 5


class JsonFormatter(logging.Formatter):
    """One JSON object per record; never the exception text (``exc_info`` is dropped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info and record.exc_info[1] is not None:
            line.setdefault("failure", describe(record.exc_info[1]))
        return json.dumps(line, ensure_ascii=False, sort_keys=False, default=str)


_HANDLER_NAME = "sandbox-json"


def configure(level: int = logging.INFO, stream: TextIO | None = None) -> logging.Handler:
    """Send every log record to ``stream`` (stderr) as JSON lines. Idempotent."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == _HANDLER_NAME:
            root.removeHandler(h)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("sandbox").setLevel(level)
    return handler


def exception_type(exc: BaseException) -> str:
    """``module.Qualname`` of the exception's class (builtins by name alone)."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def frames(tb: TracebackType | None) -> list[str]:
    """``file:line:function`` for each frame, innermost last; paths relative to sys.path."""
    out = [f"{_short(f.filename)}:{f.lineno}:{f.name}" for f in traceback.extract_tb(tb)]
    return out[-MAX_FRAMES:]


def describe(exc: BaseException) -> dict[str, Any]:
    """What may be logged about an exception: its type, its frames, and the same for
    the chain of causes (``raise … from``, or raised while handling). No message."""
    out: dict[str, Any] = {"exception": exception_type(exc), "frames": frames(exc.__traceback__)}
    causes: list[dict[str, Any]] = []
    seen = {id(exc)}
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen and len(causes) < MAX_CAUSES:
        seen.add(id(cause))
        causes.append({"exception": exception_type(cause), "frames": frames(cause.__traceback__)})
        cause = cause.__cause__ or cause.__context__
    if causes:
        out["causes"] = causes
    return out


def _short(filename: str) -> str:
    path = Path(filename)
    for i in range(len(path.parts) - 1, -1, -1):  # ours: from the package name on
        if path.parts[i] in ("sandbox", "sandbox_runner") and i < len(path.parts) - 1:
            return Path(*path.parts[i:]).as_posix()
    best = None
    for entry in sys.path:
        if not entry:
            continue
        try:
            rel = path.relative_to(entry)
        except ValueError:
            continue
        if best is None or len(rel.parts) < len(best.parts):
            best = rel
    return best.as_posix() if best is not None else path.name
