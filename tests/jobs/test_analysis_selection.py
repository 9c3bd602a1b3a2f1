"""Partial release of an analysis job's outputs (sandbox/jobs/analysis_selection.py,
through service.decisions.record_review and the worker's release): each approval may
choose outputs; what every approving supervisor chose is released; the product, its
manifest and the audit name the withheld uids and who chose what; wrong choices are
refused with OUTPUT_SELECTION_INVALID and record nothing.

The job is submitted for real (jobs.analysis.submit) and its run's result is stored as
``jobs.analysis.execute`` stores what the runner container returned (the container
itself is tested in tests/executors/docker and, with partial release end to end, in
tests/api/test_api_analysis.py); the review, release, signing and audit here are real.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from sandbox import products, review, store
from sandbox.errors import BadInput
from sandbox.jobs import analysis, analysis_selection
from sandbox.jobs.records import get_job, transition
from sandbox.jobs.states import S
from sandbox.service import Service
from sandbox.service.decisions import record_review
from sandbox.settings import Settings
from sandbox.tokens import Principal, Role

SCRIPT = "import jinyu\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
FILES = {
    "1_0.csv": b"band,F,M\n10,40,41\nrare,1,2\n",
    "1_1.csv": b",coef,se\nage,2.0,0.01\n",
    "1_2.png": PNG,
}
UIDS = ["output_0", "output_1", "output_2"]


def _output(uid: str, kind: str, status: str, name: str) -> dict[str, Any]:
    data = FILES[name]
    return {
        "uid": uid,
        "type": kind,
        "method": kind,
        "status": status,
        "summary": f"{status}",
        "command": "",
        "exception": "",
        "comments": [],
        "checks": {"MinimumThresholdCheck": status},
        "files": [
            {
                "name": name,
                "format": name.rsplit(".", 1)[1],
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "sdc": {},
            }
        ],
    }


MANIFEST = {
    "acro_version": "1.0.2",
    "refused": [],
    "outputs": [
        _output("output_0", "table", "fail", "1_0.csv"),
        _output("output_1", "regression", "pass", "1_1.csv"),
        _output("output_2", "histogram", "pass", "1_2.png"),
    ],
}


def _in_review(svc: Service, manifest: dict[str, Any]) -> str:
    """An analysis job of op-jinshu (important data: two approvals) in review with the
    run's ``manifest`` and files stored as jobs.analysis.execute stores them."""
    conn = svc.conn()
    job = analysis.submit(
        conn, catalog=svc.catalog, grants=svc.grants, rules=svc.rules, operator="op-jinshu",
        scenario="pension-contributions", files={"main.py": SCRIPT}, entry="main.py",
        actor="op-jinshu", role="operator",
    )  # fmt: skip
    job = transition(conn, job, S.RUNNING, actor="system", role="system")
    with store.transaction(conn):
        conn.execute(
            "UPDATE analysis_scripts SET manifest_json = ? WHERE job_id = ?",
            (json.dumps(manifest), job.id),
        )
        for output in manifest["outputs"]:
            for item in output["files"]:
                conn.execute(
                    "INSERT INTO analysis_outputs (job_id, name, format, sha256, bytes, content)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (job.id, item["name"], item["format"], item["sha256"], item["bytes"],
                     FILES[item["name"]]),
                )  # fmt: skip
        transition(conn, job, S.IN_REVIEW, actor="system", role="system")
    assert get_job(conn, job.id)["required_approvals"] == 2
    return job.id


def _who(name: str) -> Principal:
    return Principal(name=name, role=Role.SUPERVISOR, token_id=f"t-{name}")


@pytest.fixture()
def svc(settings: Settings) -> Iterator[Service]:
    service = Service(settings)
    yield service
    service.stop()


def _decide(svc: Service, job_id: str, who: str, decision: str = "approve", **kw: Any) -> str:
    return record_review(
        svc.conn(), svc.worker, svc.settings.products_dir, _who(who), job_id,
        decision=decision, reason="checked", **kw,
    )  # fmt: skip


def _events(svc: Service, job_id: str, action: str) -> list[dict[str, Any]]:
    rows = (
        svc.conn()
        .execute(
            "SELECT details FROM audit_events WHERE subject = ? AND action = ? ORDER BY seq",
            (job_id, action),
        )
        .fetchall()
    )
    return [json.loads(r["details"]) for r in rows]


def test_only_the_outputs_every_approving_supervisor_chose_are_released(svc: Service):
    job_id = _in_review(svc, MANIFEST)
    assert _decide(svc, job_id, "supervisor-li", outputs=["output_2", "output_0"]) == "pending"
    assert _decide(svc, job_id, "supervisor-wang", outputs=["output_1", "output_2"]) == "approved"
    job = get_job(svc.conn(), job_id)
    assert job.state == S.RELEASED

    folder = products.product_dir(svc.settings.products_dir, job_id)
    manifest = products.verify_files(folder / "result.zip", svc.product_key.public_key())
    assert [o["uid"] for o in manifest["outputs"]] == ["output_2"]  # the intersection
    assert manifest["withheld_outputs"] == ["output_0", "output_1"]
    assert manifest["selections"] == [
        {"reviewer": "supervisor-li", "outputs": ["output_0", "output_2"]},
        {"reviewer": "supervisor-wang", "outputs": ["output_1", "output_2"]},
    ]
    with zipfile.ZipFile(folder / "result.zip") as archive:
        assert archive.namelist() == ["1_2.png"]

    # the audit: each approval's choice, and the release's released/withheld/who chose what
    approved = _events(svc, job_id, "review.approved")
    assert [e["outputs"] for e in approved] == [["output_0", "output_2"], ["output_1", "output_2"]]
    (released,) = _events(svc, job_id, "product.released")
    assert released["released_outputs"] == ["output_2"]
    assert released["withheld_outputs"] == ["output_0", "output_1"]
    assert released["selections"] == {
        "supervisor-li": ["output_0", "output_2"],
        "supervisor-wang": ["output_1", "output_2"],
    }
    assert hashlib.sha256(FILES["1_0.csv"]).hexdigest() not in json.dumps(released)

    # the operator sees only the released output (the withheld by uid); a supervisor all
    op = Principal(name="op-jinshu", role=Role.OPERATOR, token_id="t-op")
    mine = svc.analysis_detail(op, job_id)["analysis"]
    assert [o["uid"] for o in mine["outputs"]] == ["output_2"]
    assert mine["withheld_outputs"] == ["output_0", "output_1"]
    seen = svc.analysis_detail(_who("supervisor-zhao"), job_id)["analysis"]
    assert [o["uid"] for o in seen["outputs"]] == UIDS


def test_an_approval_without_a_choice_chooses_every_output(svc: Service):
    job_id = _in_review(svc, MANIFEST)
    _decide(svc, job_id, "supervisor-li")
    _decide(svc, job_id, "supervisor-wang", outputs=["output_0", "output_1"])
    folder = products.product_dir(svc.settings.products_dir, job_id)
    manifest = products.verify_files(folder / "result.zip", svc.product_key.public_key())
    assert [o["uid"] for o in manifest["outputs"]] == ["output_0", "output_1"]
    assert manifest["withheld_outputs"] == ["output_2"]
    assert _events(svc, job_id, "review.approved")[0]["outputs"] == UIDS


@pytest.mark.parametrize(
    "decision,outputs,words",
    [
        ("approve", ["output_9"], "no output 'output_9'"),
        ("approve", [], "no output is not an approval"),
        ("reject", ["output_0"], "rejection releases nothing"),
    ],
)
def test_a_wrong_choice_is_refused_and_records_nothing(
    svc: Service, decision: str, outputs: list[str], words: str
):
    job_id = _in_review(svc, MANIFEST)
    with pytest.raises(BadInput) as info:
        _decide(svc, job_id, "supervisor-li", decision, outputs=outputs)
    assert info.value.code == "OUTPUT_SELECTION_INVALID" and info.value.http_status == 422
    assert words in info.value.message
    if "output_9" in words:
        assert "output_0, output_1, output_2" in info.value.hint
    assert review.decisions(svc.conn(), job_id) == []
    assert analysis_selection.selections(svc.conn(), job_id) == {}
    assert get_job(svc.conn(), job_id).state == S.IN_REVIEW


def test_a_choice_that_leaves_nothing_with_the_earlier_approvals_is_refused(svc: Service):
    job_id = _in_review(svc, MANIFEST)
    _decide(svc, job_id, "supervisor-li", outputs=["output_0"])
    with pytest.raises(BadInput) as info:
        _decide(svc, job_id, "supervisor-wang", outputs=["output_1", "output_2"])
    assert info.value.code == "OUTPUT_SELECTION_INVALID"
    assert "every approving supervisor" in info.value.message
    assert [d["reviewer"] for d in review.decisions(svc.conn(), job_id)] == ["supervisor-li"]
    assert get_job(svc.conn(), job_id).state == S.IN_REVIEW
    # the second supervisor may still approve what the first chose, or reject
    assert _decide(svc, job_id, "supervisor-wang", outputs=["output_0"]) == "approved"


def test_a_job_without_outputs_refuses_a_choice_gracefully(svc: Service):
    """A job held in review with no outputs (e.g. a failed run waiting for a
    supervisor): choosing outputs is refused with a clear error, nothing recorded."""
    job_id = _in_review(svc, {"acro_version": "1.0.2", "refused": [], "outputs": []})
    with pytest.raises(BadInput) as info:
        _decide(svc, job_id, "supervisor-li", outputs=["output_0"])
    assert info.value.code == "OUTPUT_SELECTION_INVALID"
    assert "has no outputs to choose from" in info.value.message
    assert review.decisions(svc.conn(), job_id) == []


def test_a_sql_job_refuses_a_choice(svc: Service):
    from sandbox.jobs import create_job

    conn = svc.conn()
    job = create_job(
        conn, operator="op-jinshu", scenario="pension-contributions", sql="SELECT 1",
        epsilon=1.0, delta=0.0, weights=None, actor="op-jinshu", role="operator",
    )  # fmt: skip
    assert analysis_selection.choose(
        conn, job_id=job.id, kind="sql", decision="approve", chosen=None
    ) is None  # fmt: skip
    with pytest.raises(BadInput) as info:
        analysis_selection.choose(
            conn, job_id=job.id, kind="sql", decision="approve", chosen=["output_0"]
        )
    assert "Only an analysis job's outputs" in info.value.message


def test_choices_recorded_before_a_crash_are_released_at_recovery(svc: Service):
    """Two approvals (with their choices) recorded, then the server died before the
    product was written: recovery releases what both chose."""
    job_id = _in_review(svc, MANIFEST)
    conn = svc.conn()
    for who, chosen in (("supervisor-li", ["output_1"]), ("supervisor-wang", UIDS)):
        with store.transaction(conn):
            review.record_decision(
                conn, job_id=job_id, submitter="op-jinshu", required=2, reviewer=who,
                decision="approve", reason="ok", now=datetime.now(UTC),
            )  # fmt: skip
            analysis_selection.record(conn, job_id=job_id, reviewer=who, outputs=chosen)
    assert svc.worker.recover()["routed"] == 1
    assert get_job(conn, job_id).state == S.RELEASED
    folder = products.product_dir(svc.settings.products_dir, job_id)
    manifest = products.verify_files(folder / "result.zip", svc.product_key.public_key())
    assert [o["uid"] for o in manifest["outputs"]] == ["output_1"]
    assert manifest["withheld_outputs"] == ["output_0", "output_2"]
