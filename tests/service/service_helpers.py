"""Principals and the query the service tests share."""

from __future__ import annotations

from sandbox.tokens import Principal, Role

JINSHU = Principal(Role.OPERATOR, "op-jinshu", "t1")
HUAXIN = Principal(Role.OPERATOR, "op-huaxin", "t2")
LI = Principal(Role.SUPERVISOR, "supervisor-li", "t3")
ROOT = Principal(Role.ADMIN, "root", "t4")
SQL = "SELECT sex, COUNT(*) AS n FROM persons GROUP BY sex"
