"""The first gate: the SQL text itself (size, characters, nesting) and parsing.

Everything here is cheap and iterative, so hostile input (a megabyte of SQL, ten
thousand parentheses, invisible characters) is refused before sqlglot's recursive
parser sees it. sqlglot's own RecursionError is translated too.
"""

from __future__ import annotations

import logging
import sys
import unicodedata

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType  # type: ignore[attr-defined]

from sandbox.errors import QueryRefused

MAX_SQL_BYTES = 100_000
MAX_DEPTH = 50  # parentheses / expression nesting an operator may write
MAX_TREE_DEPTH = 200  # AST depth (a parenthesis is ~2 levels; operator chains count once)
MAX_RAW_DEPTH = 2_000  # AST depth counting every link of long AND/OR/+ chains
# sqlglot's parser and generator recurse ~20 Python frames per nesting level.
RECURSION_LIMIT = 20_000
MAX_TOKENS = 20_000

# Invisible or control characters have no place in a query: they hide text from
# the person reading it (bidi overrides, zero-width joiners) or confuse parsers.
_ALLOWED_CONTROL = {"\t", "\n", "\r"}
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}

_UNARY = {TokenType.NOT, TokenType.DASH, TokenType.PLUS, TokenType.TILDE}
# Chains of one associative operator count as one level of nesting.
_CHAINS = (exp.And, exp.Or, exp.Add, exp.Mul, exp.DPipe, exp.Sub)


def refuse(code: str, message: str, hint: str = "", node: exp.Expr | None = None) -> QueryRefused:
    """A QueryRefused located at ``node`` (line/column) when sqlglot knows where it is."""
    line = col = None
    if node is not None:
        for n in node.walk():
            meta = n.meta if isinstance(n, exp.Expr) else None
            if meta and "line" in meta:
                line, col = int(meta["line"]), int(meta["col"])
                break
    return QueryRefused(code, message, hint=hint, line=line, col=col)


def snippet(node: exp.Expr, limit: int = 80) -> str:
    """The operator's own SQL for a node, without comments, shortened for messages."""
    try:
        text = node.sql(dialect="duckdb", comments=False)
    except Exception:  # RecursionError; a compiler-made node the generator does not know
        text = type(node).__name__
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def func_name(node: exp.Expr) -> str:
    """The function name as the query shows it (sqlglot's class names can differ)."""
    if isinstance(node, exp.Anonymous):
        return str(node.this).upper()
    head = snippet(node, 200).split("(", 1)[0].strip()
    return head.upper() if head and " " not in head else type(node).__name__.upper()


def check_text(sql: object) -> str:
    """Refuse empty, oversized and oddly-encoded SQL text; return it unchanged."""
    if not isinstance(sql, str):
        raise QueryRefused("EMPTY_QUERY", "The query must be SQL text.", hint="Send one SELECT.")
    if len(sql) > MAX_SQL_BYTES or len(sql.encode("utf-8", "surrogatepass")) > MAX_SQL_BYTES:
        raise QueryRefused(
            "QUERY_TOO_LARGE",
            f"The SQL text is longer than {MAX_SQL_BYTES // 1000} KB.",
            hint="Aggregate queries are short; split the work into several queries.",
        )
    if not sql.strip():
        raise QueryRefused("EMPTY_QUERY", "The SQL text is empty.", hint="Send one SELECT query.")
    for i, ch in enumerate(sql):
        if ch in _ALLOWED_CONTROL:
            continue
        if unicodedata.category(ch) in _REFUSED_CATEGORIES:
            line = sql.count("\n", 0, i) + 1
            col = i - (sql.rfind("\n", 0, i) + 1) + 1
            raise QueryRefused(
                "INVALID_CHARACTER",
                f"The SQL contains an invisible or control character (U+{ord(ch):04X}) "
                f"at line {line}, column {col}.",
                hint="Retype the query as plain text; remove zero-width, bidi and control "
                "characters.",
                line=line,
                col=col,
            )
    return sql


def parse_statement(sql: str) -> exp.Expr:
    """Tokenize, bound the nesting, parse; exactly one statement or a refusal."""
    logging.getLogger("sqlglot").setLevel(logging.ERROR)
    if sys.getrecursionlimit() < RECURSION_LIMIT:
        # Python 3.11 frames live on the heap; this only lets sqlglot's recursive
        # descent reach the nesting we allow. Depth is bounded before parsing.
        sys.setrecursionlimit(RECURSION_LIMIT)
    dialect = sqlglot.Dialect.get_or_raise("duckdb")
    try:
        tokens = dialect.tokenize(sql)
    except TokenError as exc:
        raise QueryRefused(
            "PARSE_ERROR",
            "The SQL could not be read: an unterminated string, quoted name or comment.",
            hint="Check that every quote and /* comment */ is closed.",
        ) from exc
    depth = run = 0
    for tok in tokens:
        # a run of unary operators (NOT NOT NOT ..., - - - ...) nests like parentheses
        run = run + 1 if tok.token_type in _UNARY else 0
        if run > MAX_DEPTH:
            raise QueryRefused(
                "QUERY_TOO_DEEP",
                f"The SQL chains more than {MAX_DEPTH} unary operators (line {tok.line}).",
                hint="Remove the repeated NOT or minus signs.",
                line=tok.line,
                col=tok.col,
            )
        if tok.token_type in (TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.CASE):
            depth += 1
            if depth > MAX_DEPTH:
                raise QueryRefused(
                    "QUERY_TOO_DEEP",
                    f"The SQL nests parentheses or CASE deeper than {MAX_DEPTH} levels "
                    f"(line {tok.line}).",
                    hint="Flatten the expression; use IN (...) instead of long OR chains.",
                    line=tok.line,
                    col=tok.col,
                )
        elif tok.token_type in (TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.END):
            depth = max(0, depth - 1)
    if len(tokens) > MAX_TOKENS:
        raise QueryRefused(
            "QUERY_TOO_LARGE",
            f"The SQL has more than {MAX_TOKENS} tokens.",
            hint="Aggregate queries are short; split the work into several queries.",
        )
    try:
        statements = dialect.parser().parse(tokens, sql)
    except ParseError as exc:
        err = exc.errors[0] if exc.errors else {}
        line, col = err.get("line"), err.get("col")
        near = str(err.get("highlight") or "").strip()[:40]
        where = f" near line {line}, column {col}" if line else ""
        near_txt = f" ({near!r})" if near else ""
        raise QueryRefused(
            "PARSE_ERROR",
            f"The SQL could not be parsed{where}{near_txt}.",
            hint="Write one DuckDB SELECT statement; check commas, parentheses and quotes.",
            line=line,
            col=col,
        ) from exc
    except RecursionError as exc:
        raise too_deep() from exc
    real = [s for s in statements if s is not None and not isinstance(s, exp.Semicolon)]
    if not real:
        raise QueryRefused(
            "EMPTY_QUERY", "The SQL holds only comments.", hint="Send one SELECT query."
        )
    if len(real) > 1:
        raise refuse(
            "MULTIPLE_STATEMENTS",
            f"The SQL holds {len(real)} statements; only one is accepted.",
            "Send one SELECT per request; remove everything after the first ';'.",
            real[1],
        )
    check_tree_depth(real[0])
    return real[0]


def too_deep() -> QueryRefused:
    return QueryRefused(
        "QUERY_TOO_DEEP",
        f"The SQL expression is nested deeper than {MAX_DEPTH} levels.",
        hint="Flatten the expression; use IN (...) instead of long OR chains.",
    )


def check_tree_depth(root: exp.Expr) -> None:
    """Iteratively measure nesting; chains of one operator count once."""
    stack: list[tuple[exp.Expr, int, int]] = [(root, 0, 0)]
    while stack:
        node, logical, raw = stack.pop()
        if logical > MAX_TREE_DEPTH or raw > MAX_RAW_DEPTH:
            raise too_deep()
        for child in node.iter_expressions():
            same_chain = isinstance(node, _CHAINS) and type(child) is type(node)
            stack.append((child, logical if same_chain else logical + 1, raw + 1))
