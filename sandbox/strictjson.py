"""Strict JSON: what the API bodies and product manifests are read with.

``json.loads`` lets the last of two equal keys win (``{"epsilon": 0.1, "epsilon": 5}``
is 5 to us and perhaps 0.1 to whoever looked at the text), accepts ``NaN`` and
``Infinity``, and fails with ``RecursionError`` on deep nesting. ``loads`` refuses all
three with a ``JSONRefused`` that says which, so the caller can turn it into its own
error code.
"""

from __future__ import annotations

import json
from typing import Any, Literal

MAX_DEPTH = 32

Reason = Literal["duplicate_key", "too_deep", "invalid"]


class JSONRefused(ValueError):
    """The text is not strict JSON. ``reason`` says why; ``key`` names a duplicate."""

    def __init__(self, reason: Reason, message: str, key: str = "") -> None:
        super().__init__(message)
        self.reason: Reason = reason
        self.key = key


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise JSONRefused("duplicate_key", "a key appears twice in one object", key=k[:60])
        out[k] = v
    return out


def _constant(name: str) -> Any:
    raise JSONRefused("invalid", f"{name} is not a JSON number")


def depth(obj: Any) -> int:
    """How deeply lists and objects nest in ``obj`` (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, d + 1) for v in item)
        else:
            continue
        deepest = max(deepest, d + 1)
    return deepest


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON, refusing duplicate keys, NaN/Infinity and nesting past ``max_depth``."""
    try:
        obj = json.loads(data, object_pairs_hook=_pairs, parse_constant=_constant)
    except JSONRefused:
        raise
    except RecursionError as exc:
        raise JSONRefused("too_deep", f"nested deeper than {max_depth} levels") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise JSONRefused("invalid", "not valid JSON") from exc
    if depth(obj) > max_depth:
        raise JSONRefused("too_deep", f"nested deeper than {max_depth} levels")
    return obj
