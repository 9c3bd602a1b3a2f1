"""The row bound of a Plan, read back: verify.py's second check, continued.

At most R rows per unit (``rows_per_unit`` > 1) is two stages (build.py, issue 17)::

    <over>     SELECT __unit FROM <prev> WHERE NOT __unit IS NULL GROUP BY __unit
               HAVING COUNT(*) > R
    <bounded>  SELECT * FROM <prev> WHERE NOT __unit IS NULL
                 AND NOT __unit IN (SELECT __unit FROM <over>)
               UNION ALL
               SELECT * EXCLUDE (__r, __rn) FROM (SELECT *, ROW_NUMBER() OVER
                 (PARTITION BY __unit ORDER BY __r) AS __rn FROM (SELECT *, RANDOM() AS __r
                 FROM <prev> WHERE __unit IS NULL OR __unit IN (SELECT __unit FROM <over>)))
               WHERE __rn <= R

Each is held to exactly that text, parsed here from this module's own template with
the stage names and the Plan's R, never from the compiler's nodes. Why it bounds: a
non-NULL unit is in <over> exactly when it has more than R rows in <prev>; then it is
only in the second branch, which keeps at most R of its rows; otherwise it is only in
the first, with its at most R rows. A NULL unit is only in the second branch.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp

_OVER = (
    "SELECT __unit FROM {prev} WHERE NOT __unit IS NULL GROUP BY __unit HAVING COUNT(*) > {limit}"
)
_BOUNDED = (
    "SELECT * FROM {prev} WHERE NOT __unit IS NULL "
    "AND NOT __unit IN (SELECT __unit FROM {over}) "
    "UNION ALL "
    "SELECT * EXCLUDE (__r, __rn) FROM (SELECT *, ROW_NUMBER() OVER "
    "(PARTITION BY __unit ORDER BY __r) AS __rn FROM (SELECT *, RANDOM() AS __r "
    "FROM {prev} WHERE __unit IS NULL OR __unit IN (SELECT __unit FROM {over}))) "
    "WHERE __rn <= {limit}"
)
# the stage names a bound may read and write (no operator text reaches the template)
_NAMES = frozenset({"__rows", "__groups", "__over", "__unit_rows", "__unit_over"})


def row_bound_ok(
    over_stage: exp.Expr, bounded_stage: exp.Expr, prev: str, over: str, limit: int
) -> bool:
    """Whether ``over_stage`` / ``bounded_stage`` are exactly the row bound of ``prev``
    at ``limit`` rows per unit, the units over it named ``over``."""
    if prev not in _NAMES or over not in _NAMES or type(limit) is not int or limit < 1:
        return False
    want_over = sqlglot.parse_one(_OVER.format(prev=prev, limit=limit), read="duckdb")
    want_bounded = sqlglot.parse_one(
        _BOUNDED.format(prev=prev, over=over, limit=limit), read="duckdb"
    )
    return bool(over_stage == want_over and bounded_stage == want_bounded)
