"""The call log of an analysis job: what ``jinyu.acro`` records, what the checker replays.

Issue 18. A script's ACRO calls are *recorded* in the script's process
(``analysis_child``) and *replayed* by the checker (``analysis_checker``), a fresh
process the script never ran in, into a fresh ACRO session with the bureau's
thresholds. Only the checker's verdicts leave. This module is the one definition of
the log both sides use; it is imported by those two processes only, never by the
supervisor (``analysis``, standard library only).

The log is a directory: ``calls.json`` and argument files ``a<n>.parquet``.

``calls.json``: ``{"version": 1, "calls": [{"method", "args", "command"}, ...]}``,
``args`` maps a parameter's name to an encoded value. Values are encoded in SAFE
formats only, never pickle:

- ``{"s": x}``: ``None``, a bool, an int, a finite float, a str;
- ``{"f": "nan" | "inf" | "-inf"}``: a float that is not finite;
- ``{"l": [...]}``, ``{"t": [...]}``: a list, a tuple of encoded values;
- ``{"d": [[key, value], ...]}``: a dict (keys: str or int scalars);
- ``{"frame": "a3.parquet"}``: a pandas DataFrame (its index kept);
- ``{"series": "a4.parquet", "name": <encoded scalar>}``: a pandas Series;
- ``{"array": "a5.parquet", "ndim": 1 | 2}``: a numeric numpy array.

Anything else (a callable ``aggfunc``, an object, a column of lists) is refused with
``TypeError`` in the script. A frame must come back from Parquet equal to what the
script passed, or it is refused too: the checker sees exactly the script's inputs.
The supported subset is documented in docs/analysis-jobs.md.
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
import tokenize
from typing import Any

LOG_FILE = "calls.json"
LOG_VERSION = 1
LOG_MAX_BYTES = 4 * 1024 * 1024
MAX_CALLS = 500
MAX_FILES = 2000
MAX_NODES = 20_000  # encoded values in one call's arguments
MAX_DEPTH = 6
FILE_MAX_BYTES = 1024 * 1024 * 1024
TEXT_MAX = 4000
ARG_FILE = re.compile(r"^a[0-9]{1,5}\.parquet$")
_PNG_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}\.png$")
_AGGFUNC = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_EXTENSION = re.compile(r"^\.[A-Za-z0-9]{1,10}$")

# The ACRO methods a script may call, and the parameters each may be given. No
# ``**kwargs`` (they reach matplotlib, statsmodels, pandas), no ``backend`` or ``axis``.
_MODEL = frozenset({"endog", "exog", "missing"})
_FORMULA = frozenset({"formula", "data", "subset", "drop_cols"})
METHODS: dict[str, frozenset[str]] = {
    "crosstab": frozenset(
        {
            "index",
            "columns",
            "values",
            "rownames",
            "colnames",
            "aggfunc",
            "margins",
            "margins_name",
            "dropna",
            "normalize",
            "show_suppressed",
        }
    ),
    "pivot_table": frozenset(
        {
            "data",
            "values",
            "index",
            "columns",
            "aggfunc",
            "fill_value",
            "margins",
            "dropna",
            "margins_name",
            "observed",
            "sort",
        }
    ),
    "ols": _MODEL | {"hasconst"},
    "olsr": _FORMULA,
    "logit": _MODEL | {"check_rank"},
    "logitr": _FORMULA,
    "probit": _MODEL | {"check_rank"},
    "probitr": _FORMULA,
    "hist": frozenset(
        {
            "data",
            "column",
            "by_val",
            "grid",
            "xlabelsize",
            "xrot",
            "ylabelsize",
            "yrot",
            "sharex",
            "sharey",
            "figsize",
            "layout",
            "bins",
            "legend",
            "filename",
        }
    ),
    "pie": frozenset({"data", "column", "filename"}),
    "surv_func": frozenset(
        {"time", "status", "output", "entry", "title", "freq_weights", "exog", "bw_factor"}
        | {"filename"}
    ),
    "add_exception": frozenset({"output", "reason"}),
    "add_comments": frozenset({"output", "comment"}),
    "custom_output": frozenset({"filename", "comment"}),
    "rename_output": frozenset({"old", "new"}),
    "remove_output": frozenset({"key"}),
    "enable_suppression": frozenset(),
    "disable_suppression": frozenset(),
    "enable_rounding": frozenset({"base"}),
    "disable_rounding": frozenset(),
}
# In a formula: the data's column names, these functions, numbers and these operators.
# No strings, attributes or subscripts: a formula is evaluated as Python (patsy,
# formulaic), so anything more could run the script's code in the checker.
FORMULA_FUNCTIONS = frozenset({"C", "I"})
FORMULA_OPS = frozenset({"~", "+", "-", "*", "/", ":", "**", "(", ")", ","})
_SCALARS = (str, int, float, bool, type(None))


class LogInvalid(Exception):
    """The log (or a call in it) is not one the recorder could have written."""


class LogTooLarge(Exception):
    """The log is over one of its caps."""


def make_session(thresholds: dict[str, Any]) -> Any:
    """A fresh ACRO session with the bureau's thresholds (standalone, no suppression)."""
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


def check_call(method: str, args: dict[str, Any]) -> None:
    """Refuse (TypeError) a call outside the supported subset; the same on both sides."""
    allowed = METHODS.get(method)
    if allowed is None:
        raise TypeError(f"acro.{method} is not supported in analysis jobs")
    for name in args:
        if name not in allowed:
            raise TypeError(f"acro.{method}: argument {name!r} is not supported in analysis jobs")
    if "formula" in args:
        check_formula(args["formula"], args.get("data"))
    png = args.get("filename")
    if method in {"hist", "pie", "surv_func"} and png is not None:  # noqa: SIM102
        if not isinstance(png, str) or not _PNG_NAME.match(png):
            raise TypeError(f"acro.{method}: filename must be a plain name ending .png")
    aggfunc = args.get("aggfunc")
    funcs = aggfunc if isinstance(aggfunc, list) else [aggfunc]
    for func in funcs:
        if func is not None and not (isinstance(func, str) and _AGGFUNC.match(func)):
            raise TypeError(f"acro.{method}: aggfunc must be a function's name, e.g. 'mean'")
    if method in _TEXT_METHODS and not all(isinstance(v, str) for v in args.values()):
        raise TypeError(f"acro.{method}: its arguments must be str")
    base = args.get("base")
    if base is not None and (isinstance(base, bool) or not isinstance(base, int)):
        raise TypeError("acro.enable_rounding: base must be an int")


_TEXT_METHODS = frozenset(
    {"add_exception", "add_comments", "custom_output", "rename_output", "remove_output"}
)


def check_formula(formula: Any, data: Any) -> None:
    import pandas as pd

    if not isinstance(formula, str) or len(formula) > TEXT_MAX:
        raise TypeError("a formula must be a str")
    if not isinstance(data, pd.DataFrame):
        raise TypeError("a formula needs data= a pandas DataFrame")
    columns = {c for c in data.columns if isinstance(c, str)}
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(formula).readline))
    except (tokenize.TokenError, SyntaxError) as exc:
        raise TypeError("the formula cannot be read") from exc
    for tok in tokens:
        if tok.type in {tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER}:
            continue
        if tok.type == tokenize.NUMBER:
            continue
        if tok.type == tokenize.NAME and (tok.string in columns or tok.string in FORMULA_FUNCTIONS):
            continue
        if tok.type == tokenize.OP and tok.string in FORMULA_OPS:
            continue
        raise TypeError(
            "a formula may hold only the data's column names, C(), I(), numbers and "
            "~ + - * / : ** ( ) ,"
        )


def custom_extension(filename: str) -> str:
    """The extension a custom output's placeholder keeps (ACRO blocks some)."""
    ext = os.path.splitext(filename)[1]
    return ext if _EXTENSION.match(ext) else ""


# -- encoding (the recorder, in the script's process) ------------------------------


class Encoder:
    """Encodes one call's arguments, writing frames as Parquet into ``log_dir``."""

    def __init__(self, log_dir: str, first_file: int) -> None:
        self.log_dir = log_dir
        self.next_file = first_file
        self.nodes = 0

    def encode(self, value: Any, depth: int = 0) -> dict[str, Any]:
        import numpy as np
        import pandas as pd

        self.nodes += 1
        if self.nodes > MAX_NODES or depth > MAX_DEPTH:
            raise TypeError("an argument is too deeply nested or too long for analysis jobs")
        if isinstance(value, np.generic) and not isinstance(value, np.ndarray):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            return {"f": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
        if isinstance(value, _SCALARS):
            return {"s": value}
        if isinstance(value, list):
            return {"l": [self.encode(v, depth + 1) for v in value]}
        if isinstance(value, tuple):
            return {"t": [self.encode(v, depth + 1) for v in value]}
        if isinstance(value, dict):
            items = []
            for key, item in value.items():
                if isinstance(key, bool) or not isinstance(key, (str, int)):
                    raise TypeError("a dict argument's keys must be str or int")
                items.append([key, self.encode(item, depth + 1)])
            return {"d": items}
        if isinstance(value, pd.DataFrame):
            return {"frame": self._write(value, value)}
        if isinstance(value, pd.Series):
            name = self.encode(value.name, MAX_DEPTH)
            if "s" not in name and "f" not in name:
                raise TypeError("a Series' name must be a str, a number or None")
            return {"series": self._write(value.to_frame(name="v"), value), "name": name}
        if isinstance(value, np.ndarray):
            if value.ndim not in (1, 2) or value.dtype.kind not in "biuf":
                raise TypeError("a numpy array argument must be 1-d or 2-d and numeric")
            frame = (
                pd.DataFrame({"v": value})
                if value.ndim == 1
                else pd.DataFrame(value, columns=[f"c{i}" for i in range(value.shape[1])])
            )
            return {"array": self._write(frame, frame), "ndim": value.ndim}
        raise TypeError(
            f"an argument of type {type(value).__name__} is not supported in analysis jobs "
            "(use DataFrames, Series, numeric arrays, str, numbers, lists, dicts)"
        )

    def _write(self, frame: Any, original: Any) -> str:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.next_file >= MAX_FILES:
            raise TypeError("too many DataFrame/Series arguments in one analysis job")
        try:
            table = pa.Table.from_pandas(frame, preserve_index=True)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise TypeError("a DataFrame/Series argument cannot be stored safely") from exc
        check_schema(table)
        name = f"a{self.next_file}.parquet"
        self.next_file += 1
        path = os.path.join(self.log_dir, name)
        pq.write_table(table, path)
        back = pq.read_table(path).to_pandas()
        if not _same(frame, back):
            raise TypeError("a DataFrame/Series argument does not survive storage unchanged")
        return name


def _same(frame: Any, back: Any) -> bool:
    return bool(
        frame.equals(back)
        and list(frame.columns) == list(back.columns)
        and list(frame.index.names) == list(back.index.names)
        and list(frame.dtypes) == list(back.dtypes)
        and frame.index.equals(back.index)
    )


def check_schema(table: Any) -> None:
    """Only flat columns of plain types (no extension, nested or binary types)."""
    import pyarrow as pa

    t = pa.types
    for field in table.schema:
        kind = field.type
        if t.is_dictionary(kind):
            kind = kind.value_type
        ok = (
            t.is_null(kind)
            or t.is_boolean(kind)
            or t.is_integer(kind)
            or t.is_floating(kind)
            or t.is_string(kind)
            or t.is_large_string(kind)
            or t.is_timestamp(kind)
            or t.is_date(kind)
            or t.is_duration(kind)
        )
        if not ok or isinstance(field.type, pa.ExtensionType):
            raise TypeError("a DataFrame/Series column of this type is not supported")


# -- decoding (the checker) ----------------------------------------------------------


class Decoder:
    """Decodes one log's values; reads argument files from ``dir_fd`` under caps."""

    def __init__(self, dir_fd: int) -> None:
        self.dir_fd = dir_fd
        self.budget = 4 * FILE_MAX_BYTES
        self.nodes = 0

    def decode(self, value: Any, depth: int = 0) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES * MAX_CALLS or depth > MAX_DEPTH + 1:
            raise LogTooLarge
        if not isinstance(value, dict) or len(value) not in (1, 2):
            raise LogInvalid
        if len(value) == 1 and "s" in value:
            scalar = value["s"]
            if not isinstance(scalar, _SCALARS):
                raise LogInvalid
            return scalar
        if len(value) == 1 and "f" in value:
            return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[_pick(value["f"])]
        if len(value) == 1 and ("l" in value or "t" in value):
            items = value.get("l", value.get("t"))
            if not isinstance(items, list):
                raise LogInvalid
            out = [self.decode(v, depth + 1) for v in items]
            return out if "l" in value else tuple(out)
        if len(value) == 1 and "d" in value:
            return self._dict(value["d"], depth)
        if len(value) == 1 and "frame" in value:
            return self._read(value["frame"])
        if len(value) == 2 and "series" in value and "name" in value:
            name = self.decode(value["name"], depth + 1)
            if isinstance(name, (list, tuple, dict)):
                raise LogInvalid
            series = self._read(value["series"])["v"]
            series.name = name
            return series
        if len(value) == 2 and "array" in value and value.get("ndim") in (1, 2):
            frame = self._read(value["array"])
            return frame["v"].to_numpy() if value["ndim"] == 1 else frame.to_numpy()
        raise LogInvalid

    def _dict(self, items: Any, depth: int) -> dict[Any, Any]:
        if not isinstance(items, list):
            raise LogInvalid
        out: dict[Any, Any] = {}
        for item in items:
            if not isinstance(item, list) or len(item) != 2:
                raise LogInvalid
            key = item[0]
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise LogInvalid
            out[key] = self.decode(item[1], depth + 1)
        return out

    def _read(self, name: Any) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not isinstance(name, str) or not ARG_FILE.match(name):
            raise LogInvalid
        data = read_regular(name, FILE_MAX_BYTES, self.dir_fd)
        self.budget -= len(data)
        if self.budget < 0:
            raise LogTooLarge
        try:
            table = pq.read_table(pa.BufferReader(data))
            check_schema(table)
            return table.to_pandas()
        except (pa.ArrowException, TypeError, ValueError, OSError) as exc:
            raise LogInvalid from exc


def _pick(value: Any) -> str:
    if value not in ("nan", "inf", "-inf"):
        raise LogInvalid
    return str(value)


def read_regular(name: str, max_bytes: int, dir_fd: int) -> bytes:
    """A regular file in ``dir_fd``, one link, no symlink followed, at most max_bytes."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:
        raise LogInvalid from exc
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            raise LogInvalid
        if info.st_size > max_bytes:
            raise LogTooLarge
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise LogTooLarge
    return data
