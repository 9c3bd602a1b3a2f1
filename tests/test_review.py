"""Output review: suppression, rounding, near-duplicates, approvals by grade."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from sandbox import review, store
from sandbox.errors import BadInput, Conflict
from sandbox.plan import KeySpec, Measure, Output, Plan

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def make_plan(**overrides) -> Plan:
    fields = dict(
        query_sha256="q" * 64,
        dataset="population",
        dataset_version="2026.3",
        privacy_unit="person_id",
        definition="pure",
        tables={"persons": "population/persons.parquet"},
        dataset_versions={"population": "2026.3"},
        sql="SELECT county_code, COUNT(*) AS m0, SUM(age) AS m1 FROM persons GROUP BY 1",
        keys=(KeySpec("county_code", "persons.county_code", ("140105", "140106", "140107")),),
        measures=(Measure("m0", "count"), Measure("m1", "sum", "persons.age", 0, 100)),
        outputs=(
            Output("county_code", "key"),
            Output("n", "count", ("m0",)),
            Output("mean_age", "mean", ("m0", "m1")),
        ),
        post_sql="SELECT county_code, m0 AS n, m1 / m0 AS mean_age FROM noisy",
        unit_rows=1,
        unit_groups=1,
        max_groups=3,
    )
    fields.update(overrides)
    return Plan(**fields)


def noisy_table() -> pa.Table:
    return pa.table(
        {
            "county_code": ["140105", "140106", "140107"],
            "n": [1234, 7, 42],
            "mean_age": [40.2, 51.0, 38.9],
        }
    )


@pytest.fixture(scope="module")
def rules(policies_dir):
    return review.load_rules(policies_dir)


def test_rules_file_sets_approvals_per_grade(rules):
    assert [
        rules.for_grade(g).approvals
        for g in ("general-1", "general-2", "general-3", "general-4", "important")
    ] == [0, 0, 1, 1, 2]
    assert rules.min_count_for("general-3") == 10
    assert rules.min_count_for("important") == 20
    assert rules.for_grade("no-such-grade").approvals == 2  # unknown: strictest


def test_small_cells_are_suppressed_and_flagged(rules):
    checked = review.check_output(noisy_table(), make_plan(), grade="general-1", rules=rules)
    out = checked.table.to_pydict()
    assert out["county_code"] == ["140105", "140106", "140107"]  # keys stay
    assert out["n"] == [1234, None, 42]
    assert out["mean_age"] == [40.2, None, 38.9]
    assert out["suppressed"] == [False, True, False]
    assert checked.suppressed_rows == 1
    assert [f["code"] for f in checked.flags] == ["cells_suppressed"]
    assert checked.required_approvals == 0


def test_counts_are_rounded_to_the_grade_base(rules):
    checked = review.check_output(noisy_table(), make_plan(), grade="general-3", rules=rules)
    assert checked.table.column("n").to_pylist() == [1235, None, 40]
    assert checked.round_base == 5
    assert checked.required_approvals == 1
    important = review.check_output(noisy_table(), make_plan(), grade="important", rules=rules)
    # min_count 20 for important data: 7 is suppressed, 42 is kept and rounded to 40
    assert important.table.column("n").to_pylist() == [1230, None, 40]
    assert important.required_approvals == 2


def test_a_query_without_count_is_flagged(rules):
    plan = make_plan(
        outputs=(Output("county_code", "key"), Output("mean_age", "mean", ("m0", "m1")))
    )
    table = noisy_table().drop(["n"])
    checked = review.check_output(table, plan, grade="general-1", rules=rules)
    assert [f["code"] for f in checked.flags] == ["no_count_output"]
    assert checked.table.column_names == ["county_code", "mean_age"]


def test_near_duplicate_makes_an_automatic_grade_wait(rules):
    dupes = [{"job": "j-1", "reason": "differs_in_constants"}]
    checked = review.check_output(
        noisy_table(), make_plan(), grade="general-1", rules=rules, duplicates=dupes
    )
    flag = next(f for f in checked.flags if f["code"] == "near_duplicate")
    assert flag["jobs"] == ["j-1"]
    assert checked.required_approvals == rules.flagged_approvals == 1


def test_sql_shape_ignores_only_constants():
    a = "SELECT COUNT(*) FROM persons WHERE age > 30 AND sex = 'F'"
    b = "select count(*)  from persons where age > 31 and sex = 'M';"
    c = "SELECT COUNT(*) FROM persons WHERE age < 30 AND sex = 'F'"
    assert review.sql_shape(a) == review.sql_shape(b)
    assert review.sql_shape(a) != review.sql_shape(c)
    assert review.sql_shape("SELECT m1 FROM t1") != review.sql_shape("SELECT m2 FROM t2")


@pytest.fixture()
def conn(tmp_path):
    c = store.connect(tmp_path / "r.db")
    yield c
    c.close()


def _decide(conn, reviewer, decision="approve", reason="checked the cells", required=2):
    with store.transaction(conn):
        return review.record_decision(
            conn,
            job_id="j-1",
            submitter="op-jinshu",
            required=required,
            reviewer=reviewer,
            decision=decision,
            reason=reason,
            now=NOW,
        )


def test_important_needs_two_different_supervisors(conn):
    assert _decide(conn, "li") == "pending"
    with pytest.raises(Conflict) as twice:
        _decide(conn, "li")
    assert twice.value.code == "SELF_REVIEW"
    assert _decide(conn, "wang") == "approved"
    assert [d["reviewer"] for d in review.decisions(conn, "j-1")] == ["li", "wang"]


def test_submitter_may_not_review_and_a_reason_is_required(conn):
    with pytest.raises(Conflict) as own:
        _decide(conn, "op-jinshu")
    assert own.value.code == "SELF_REVIEW"
    with pytest.raises(BadInput) as no_reason:
        _decide(conn, "li", reason="  ")
    assert no_reason.value.code == "REASON_REQUIRED"
    assert review.decisions(conn, "j-1") == []


def test_one_rejection_rejects(conn):
    assert _decide(conn, "li", "approve") == "pending"
    assert _decide(conn, "wang", "reject", "could be differenced") == "rejected"


def test_near_duplicates_found_in_the_window(conn):
    def insert(job_id, operator, digest, shape, state, created):
        conn.execute(
            "INSERT INTO jobs (id, operator, scenario, sql, sql_sha256, sql_shape, epsilon,"
            " delta, state, plan_digest, created_at, updated_at)"
            " VALUES (?, ?, 's', 'x', ?, ?, 1, 0, ?, ?, ?, ?)",
            (
                job_id,
                operator,
                job_id,
                shape,
                state,
                digest,
                created.isoformat(),
                created.isoformat(),
            ),
        )

    insert("j-old", "op", "d1", "s1", "released", NOW - timedelta(days=30))
    insert("j-same", "op", "d1", "sX", "released", NOW - timedelta(hours=1))
    insert("j-shape", "op", "d2", "s1", "in_review", NOW - timedelta(hours=2))
    insert("j-other-op", "op2", "d1", "s1", "released", NOW - timedelta(hours=1))
    insert("j-refused", "op", "d1", "s1", "refused", NOW - timedelta(hours=1))
    found = review.find_near_duplicates(
        conn,
        job_id="j-new",
        operator="op",
        plan_digest="d1",
        shape="s1",
        sql_sha256="zz",
        since=NOW - timedelta(days=7),
    )
    assert sorted((f["job"], f["reason"]) for f in found) == [
        ("j-same", "same_plan"),
        ("j-shape", "differs_in_constants"),
    ]


@pytest.mark.parametrize("again", ["Supervisor-Li", "SUPERVISOR-LI", "Ｓｕｐｅｒｖｉｓｏｒ-Ｌｉ"])
def test_one_person_under_two_spellings_is_one_reviewer(conn, again):
    assert _decide(conn, "supervisor-li") == "pending"
    with pytest.raises(Conflict) as twice:
        _decide(conn, again)
    assert twice.value.code == "SELF_REVIEW"
    assert [d["reviewer"] for d in review.decisions(conn, "j-1")] == ["supervisor-li"]


def test_the_submitter_under_another_spelling_may_not_review(conn):
    with pytest.raises(Conflict) as own:
        _decide(conn, "OP-Jinshu")
    assert own.value.code == "SELF_REVIEW"


def test_decisions_recorded_before_normalisation_still_count_once(conn):
    with store.transaction(conn):
        conn.execute(
            "INSERT INTO review_decisions VALUES ('j-1', 'Supervisor-Li', 'approve', 'ok', ?)",
            (NOW.isoformat(),),
        )
    with pytest.raises(Conflict):
        _decide(conn, "supervisor-li")
    assert _decide(conn, "supervisor-wang", required=3) == "pending"
