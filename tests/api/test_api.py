"""The REST API in-process: auth, roles, ownership, limits, the one error shape, the flow."""

from __future__ import annotations

import json
import time

import pytest
from api_helpers import ENTERPRISE_SQL, INSURED_SQL, POPULATION_SQL

from sandbox import audit, products, signing, tokens
from sandbox.tokens import Role


def assert_error(resp, status: int, code: str) -> dict:
    """The ONE error shape: {"error": {"code", "message", "hint", ...extras}}."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert list(body) == ["error"]
    err = body["error"]
    assert {"code", "message", "hint"} <= set(err)
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["hint"], str)
    assert err["code"] == code
    return err


# --- the error shape -------------------------------------------------------------


def test_error_shape_is_the_same_everywhere(api):
    assert_error(api.get("/v1/no-such-thing"), 404, "NOT_FOUND")
    assert_error(api.call("DELETE", "/v1/health"), 405, "BAD_REQUEST")
    assert_error(api.get("/v1/jobs"), 401, "UNAUTHENTICATED")
    err = assert_error(
        api.post("/v1/jobs", "op-huaxin", json={"sql": "x", "scenario": "s", "epsilon": 1, "x": 1}),
        422,
        "BAD_REQUEST",
    )
    assert err["fields"][0]["field"] == "x"
    err = assert_error(
        api.post(
            "/v1/jobs",
            "op-huaxin",
            content=b"{not json",
            headers={"Content-Type": "application/json"},
        ),
        422,
        "BAD_REQUEST",
    )
    assert err["message"] == "The body is not valid JSON."
    assert_error(api.get("/v1/jobs/j-nope", "op-huaxin"), 404, "NOT_FOUND")
    assert_error(api.get("/v1/jobs?limit=0", "op-huaxin"), 422, "BAD_REQUEST")


def test_health_and_openapi_need_no_token(api):
    assert api.get("/v1/health").json()["status"] == "ok"
    schema = api.get("/openapi.json").json()
    assert "/v1/jobs" in schema["paths"] and "/v1/review/{job_id}" in schema["paths"]


# --- authentication --------------------------------------------------------------


def test_bad_missing_expired_revoked_tokens_are_401(api):
    conn = api.service.conn()
    good, record = tokens.create_token(conn, role=Role.OPERATOR, subject="op-huaxin")
    assert api.get("/v1/jobs", headers={"Authorization": f"Bearer {good}"}).status_code == 200
    expired, _ = tokens.create_token(
        conn,
        role=Role.OPERATOR,
        subject="op-huaxin",
        expires_in=tokens.parse_duration("1s"),
        now=tokens._now() - tokens.parse_duration("1h"),
    )
    tokens.revoke_token(conn, record["id"])
    for header in (
        {},
        {"Authorization": "Bearer jy_wrong"},
        {"Authorization": "Basic abc"},
        {"Authorization": f"Bearer {expired}"},
        {"Authorization": f"Bearer {good}"},
    ):
        resp = api.get("/v1/jobs", headers=header)
        assert_error(resp, 401, "UNAUTHENTICATED")
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    failed = api.get("/v1/audit?action=auth.failed", "supervisor-li").json()
    assert len(failed) == 5 and {e["details"]["reason"] for e in failed} == {"missing", "invalid"}


# --- roles and ownership ---------------------------------------------------------


def test_roles_are_checked(api):
    assert_error(api.submit("supervisor-li", ENTERPRISE_SQL, "sme-credit"), 403, "FORBIDDEN")
    assert_error(api.get("/v1/review", "op-huaxin"), 403, "FORBIDDEN")
    assert_error(api.get("/v1/audit", "op-huaxin"), 403, "FORBIDDEN")
    api.token("root", "admin")
    assert_error(api.get("/v1/jobs", "root"), 403, "FORBIDDEN")
    assert_error(api.post("/v1/admin/grants/reload", "op-huaxin"), 403, "FORBIDDEN")
    assert api.post("/v1/admin/grants/reload", "root").json()["grants"] == 4
    assert api.get("/v1/admin/tokens", "root").status_code == 200


def test_operator_never_sees_another_operators_things(api):
    job = api.submit("op-huaxin", ENTERPRISE_SQL, "sme-credit").json()
    assert api.wait(job["id"], "op-huaxin")["state"] == "released"
    jid = job["id"]
    for path in (f"/v1/jobs/{jid}", f"/v1/jobs/{jid}/product", f"/v1/products/{jid}/manifest"):
        err = assert_error(api.get(path, "op-jinshu"), 404, "NOT_FOUND")
        assert "not yours" not in err["message"]
    assert_error(api.post(f"/v1/jobs/{jid}/cancel", "op-jinshu"), 404, "NOT_FOUND")
    assert api.get("/v1/jobs", "op-jinshu").json() == []
    assert [j["id"] for j in api.get("/v1/jobs", "supervisor-li").json()] == [jid]
    budgets = api.get("/v1/budget", "op-jinshu").json()
    assert {b["operator"] for b in budgets} == {"op-jinshu"}
    assert {b["dataset"] for b in budgets} == {"population", "social_insurance"}
    # a scenario granted to someone else is refused, not run
    assert_error(api.submit("op-jinshu", ENTERPRISE_SQL, "sme-credit"), 403, "NO_GRANT")


def test_catalog_is_schema_only_and_scoped(api):
    cat = api.get("/v1/catalog", "op-huaxin").json()
    # population is only in g-huaxin-2024-study, which expired on 2025-01-01
    assert sorted(d["id"] for d in cat["datasets"]) == ["divisions", "enterprises"]
    text = json.dumps(cat)
    assert "rows" not in {k for d in cat["datasets"] for t in d["tables"] for k in t}
    assert "medical_records" not in text
    assert len(api.get("/v1/catalog", "supervisor-li").json()["datasets"]) == 5


# --- limits ----------------------------------------------------------------------


def test_big_bodies_are_413(make_api):
    api = make_api(max_body_bytes=1000)
    body = {"sql": "SELECT 1 " + "x" * 2000, "scenario": "sme-credit", "epsilon": 1}
    assert_error(api.post("/v1/jobs", "op-huaxin", json=body), 413, "PAYLOAD_TOO_LARGE")

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b" " * 200

    resp = api.post(
        "/v1/explain", "op-huaxin", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_error(resp, 413, "PAYLOAD_TOO_LARGE")


def test_requests_are_rate_limited_per_token(make_api):
    api = make_api(rate_per_minute=5)
    for _ in range(5):
        assert api.get("/v1/jobs", "op-huaxin").status_code == 200
    resp = api.get("/v1/jobs", "op-huaxin")
    assert_error(resp, 429, "RATE_LIMITED")
    assert int(resp.headers["Retry-After"]) >= 1
    assert api.get("/v1/jobs", "op-jinshu").status_code == 200  # another token is unaffected


# --- the flow --------------------------------------------------------------------


def test_general_2_is_released_automatically_with_a_verifiable_product(api):
    explained = api.post(
        "/v1/explain",
        "op-huaxin",
        json={"sql": ENTERPRISE_SQL, "scenario": "sme-credit", "epsilon": 1.0},
    )
    assert explained.status_code == 200
    assert explained.json()["required_approvals"] == 0
    job = api.submit("op-huaxin", ENTERPRISE_SQL, "sme-credit", 1.0)
    assert job.status_code == 201
    done = api.wait(job.json()["id"], "op-huaxin")
    assert done["state"] == "released", done
    assert [t["to_state"] for t in done["transitions"]] == [
        "submitted",
        "compiled",
        "budget_reserved",
        "running",
        "noised",
        "released",
    ]
    for fmt in ("csv", "json", "parquet"):
        resp = api.get(f"/v1/jobs/{done['id']}/product?format={fmt}", "op-huaxin")
        assert resp.status_code == 200
        signed = api.get(f"/v1/products/{done['id']}/manifest?format={fmt}", "op-huaxin").json()
        public = signing.load_public_key(api.get("/v1/keys/products").text.encode())
        manifest = products.verify_product(resp.content, signed, public)
        assert manifest["operator"] == "op-huaxin" and manifest["result"]["format"] == fmt
        assert manifest["privacy_loss"]["epsilon"] == 1.0
    csv = api.get(f"/v1/jobs/{done['id']}/product", "op-huaxin").text
    assert csv.splitlines()[0] == "industry,n,n_pm95,suppressed"  # each value's ± beside it
    assert len(csv.splitlines()) == 21  # header + 20 public industry keys
    # the operator's view of the released job: its rows, each value with the same ±
    released = api.get(f"/v1/jobs/{done['id']}", "op-huaxin").json()
    rows = released["preview"]["rows"]
    pms = [c["pm95"] if c else None for c in released["accuracy"]["n"]]
    lines = [line.split(",") for line in csv.splitlines()[1:]]
    assert [(r["n"], pm) for r, pm in zip(rows, pms, strict=True)] == [
        (int(n) if n else None, int(pm) if pm else None) for _, n, pm, _ in lines
    ]
    budget = {b["dataset"]: b for b in api.get("/v1/budget", "op-huaxin").json()}
    assert budget["enterprises"]["spent"] == pytest.approx(1.0)


def test_general_3_waits_for_one_supervisor(api):
    job = api.submit("op-jinshu", POPULATION_SQL, "employment-income", 1.0).json()
    waiting = api.wait(job["id"], "op-jinshu")
    assert waiting["state"] == "in_review" and waiting["required_approvals"] == 1
    # nothing of the result before release
    assert (waiting["accuracy"], waiting["flags"], waiting["rows"]) == (None, [], None)
    assert_error(api.get(f"/v1/jobs/{job['id']}/product", "op-jinshu"), 409, "INVALID_STATE")
    queue = api.get("/v1/review", "supervisor-li").json()
    assert [q["id"] for q in queue] == [job["id"]] and queue[0]["may_decide"]
    detail = api.get(f"/v1/jobs/{job['id']}", "supervisor-li").json()
    assert detail["preview"]["columns"] == ["sex", "n", "suppressed"]
    err = assert_error(
        api.post(f"/v1/review/{job['id']}", "supervisor-li", json={"decision": "approve"}),
        422,
        "REASON_REQUIRED",
    )
    assert "reason" in err["message"]
    out = api.post(
        f"/v1/review/{job['id']}",
        "supervisor-li",
        json={"decision": "approve", "reason": "two cells, large counts"},
    ).json()
    assert out["outcome"] == "approved" and out["job"]["state"] == "released"
    signed = api.get(f"/v1/products/{job['id']}/manifest", "op-jinshu").json()
    assert [r["reviewer"] for r in signed["manifest"]["reviewers"]] == ["supervisor-li"]
    rows = api.get(f"/v1/jobs/{job['id']}/product", "op-jinshu").text.splitlines()
    counts = [int(r.split(",")[1]) for r in rows[1:]]
    assert all(c % 5 == 0 for c in counts)  # general-3 rounds counts to base 5


def test_important_needs_two_different_supervisors(api):
    job = api.submit("op-jinshu", INSURED_SQL, "pension-contributions", 0.5, delta=1e-6).json()
    assert api.wait(job["id"], "op-jinshu")["state"] == "in_review"
    decide = lambda who: api.post(  # noqa: E731
        f"/v1/review/{job['id']}", who, json={"decision": "approve", "reason": "fine"}
    )
    assert decide("supervisor-li").json()["outcome"] == "pending"
    assert_error(decide("supervisor-li"), 409, "SELF_REVIEW")
    assert api.get(f"/v1/jobs/{job['id']}", "op-jinshu").json()["state"] == "in_review"
    out = decide("supervisor-wang").json()
    assert out["outcome"] == "approved" and out["job"]["state"] == "released"
    assert out["job"]["approvals"] == 2


def test_rejection_releases_nothing(api):
    job = api.submit("op-jinshu", POPULATION_SQL, "employment-income", 1.0).json()
    assert api.wait(job["id"], "op-jinshu")["state"] == "in_review"
    out = api.post(
        f"/v1/review/{job['id']}",
        "supervisor-wang",
        json={"decision": "reject", "reason": "too fine for this scenario"},
    ).json()
    assert out["outcome"] == "rejected"
    assert_error(api.get(f"/v1/jobs/{job['id']}/product", "op-jinshu"), 409, "INVALID_STATE")
    assert not (api.service.settings.products_dir / job["id"]).exists()
    status = api.get(f"/v1/jobs/{job['id']}", "op-jinshu").json()
    assert status["decisions"][0]["reason"] == "too fine for this scenario"


def test_refused_query_is_recorded_and_costs_nothing(api):
    resp = api.submit("op-huaxin", "SELECT name FROM enterprises", "sme-credit", 1.0)
    err = assert_error(resp, 400, resp.json()["error"]["code"])
    assert err["code"] in {"COLUMN_NOT_ALLOWED", "NO_AGGREGATE"}
    job = api.get(f"/v1/jobs/{err['job']}", "op-huaxin").json()
    assert job["state"] == "refused" and job["error"]["code"] == err["code"]
    over = api.submit("op-huaxin", ENTERPRISE_SQL, "sme-credit", 5.0)  # ceiling is 2.0
    assert_error(over, 400, "EPSILON_ABOVE_CEILING")
    budget = {b["dataset"]: b for b in api.get("/v1/budget", "op-huaxin").json()}
    assert budget["enterprises"]["spent"] == 0 and budget["enterprises"]["reserved"] == 0


def test_audit_search_and_verify(api):
    job = api.submit("op-huaxin", ENTERPRISE_SQL, "sme-credit", 1.0).json()
    api.wait(job["id"], "op-huaxin")
    events = api.get("/v1/audit?actor=op-huaxin&limit=5", "supervisor-li").json()
    assert events[0]["actor"] == "op-huaxin"
    actions = [e["action"] for e in api.get("/v1/audit?limit=1000", "supervisor-li").json()]
    for needed in (
        "job.submitted",
        "job.budget_reserved",
        "budget.charged",
        "job.running",
        "job.noised",
        "product.released",
        "job.released",
    ):
        assert needed in actions
    assert api.get("/v1/audit?since=2000-01-01T00:00:00Z", "supervisor-li").status_code == 200
    assert_error(api.get("/v1/audit?since=yesterday", "supervisor-li"), 400, "BAD_REQUEST")
    report = api.get("/v1/audit/verify", "supervisor-li").json()
    assert report["ok"] is True and report["entries"] >= len(actions)


def test_reports_and_a_late_decision(api):
    job = api.submit("op-jinshu", POPULATION_SQL, "employment-income", 1.0).json()
    assert api.wait(job["id"], "op-jinshu")["state"] == "in_review"
    body = {"decision": "approve", "reason": "fine"}
    assert api.post(f"/v1/review/{job['id']}", "supervisor-li", json=body).status_code == 200
    late = api.post(f"/v1/review/{job['id']}", "supervisor-wang", json=body)
    assert_error(late, 409, "INVALID_STATE")  # released already: nothing more to decide
    report = api.get("/v1/reports", "supervisor-li").json()
    group = next(g for g in report["groups"] if g["operator"] == "op-jinshu")
    assert group["scenario"] == "employment-income"
    assert_error(api.get("/v1/reports", "op-jinshu"), 403, "FORBIDDEN")


# --- strict request bodies -------------------------------------------------------


@pytest.mark.parametrize("epsilon", ["0.5", True])
def test_epsilon_must_be_a_json_number(api, epsilon):
    err = assert_error(
        api.submit("op-jinshu", POPULATION_SQL, "employment-income", epsilon), 422, "BAD_REQUEST"
    )
    assert err["fields"][0]["field"] == "epsilon"
    body = {"sql": POPULATION_SQL, "scenario": "employment-income", "epsilon": epsilon}
    err = assert_error(api.post("/v1/explain", "op-jinshu", json=body), 422, "BAD_REQUEST")
    assert err["fields"][0]["field"] == "epsilon"


def test_weights_and_delta_are_strict_too(api):
    body = {"sql": POPULATION_SQL, "scenario": "employment-income", "epsilon": 1}
    for extra in ({"delta": "0"}, {"delta": False}, {"weights": {"n": "1"}}):
        assert_error(api.post("/v1/jobs", "op-jinshu", json=body | extra), 422, "BAD_REQUEST")
    assert api.post("/v1/explain", "op-jinshu", json=body).status_code == 200  # an int is a number


def test_duplicate_keys_are_refused(api):
    raw = (
        b'{"sql": "SELECT sex, COUNT(*) AS n FROM persons GROUP BY sex", '
        b'"scenario": "employment-income", "epsilon": 0.1, "epsilon": 5}'
    )
    headers = {"Content-Type": "application/json"}
    for path in ("/v1/jobs", "/v1/explain"):
        err = assert_error(
            api.post(path, "op-jinshu", content=raw, headers=dict(headers)), 422, "DUPLICATE_KEY"
        )
        assert "'epsilon'" in err["message"]
    nested = b'{"decision": "approve", "reason": "ok", "reason": "changed"}'
    assert_error(
        api.post("/v1/review/j-x", "supervisor-li", content=nested, headers=dict(headers)),
        422,
        "DUPLICATE_KEY",
    )
    assert api.service.list_jobs(api.service.authenticate(api.token("op-jinshu"))) == []


def test_nan_and_deep_bodies_are_refused(api):
    headers = {"Content-Type": "application/json"}
    nan = b'{"sql": "SELECT 1", "scenario": "employment-income", "epsilon": NaN}'
    err = assert_error(
        api.post("/v1/jobs", "op-jinshu", content=nan, headers=dict(headers)), 422, "BAD_REQUEST"
    )
    assert "NaN" in err["message"]
    deep = (
        b'{"sql": "x", "scenario": "s", "epsilon": 1, "weights": '
        + b"[" * 20_000
        + b"]" * 20_000
        + b"}"
    )
    err = assert_error(
        api.post("/v1/jobs", "op-jinshu", content=deep, headers=dict(headers)), 422, "BAD_REQUEST"
    )
    assert "nests deeper" in err["message"]


# --- review identity --------------------------------------------------------------


def test_two_spellings_of_one_supervisor_are_one_approval(api):
    job = api.submit("op-jinshu", INSURED_SQL, "pension-contributions", 0.5, delta=1e-6).json()
    assert api.wait(job["id"], "op-jinshu")["state"] == "in_review"
    api.token("Supervisor-Li", role="supervisor")
    api.token("Ｓｕｐｅｒｖｉｓｏｒ-ｌｉ", role="supervisor")

    def decide(who):
        body = {"decision": "approve", "reason": "fine"}
        return api.post(f"/v1/review/{job['id']}", who, json=body)

    assert decide("supervisor-li").json()["outcome"] == "pending"
    assert_error(decide("Supervisor-Li"), 409, "SELF_REVIEW")
    assert_error(decide("Ｓｕｐｅｒｖｉｓｏｒ-ｌｉ"), 409, "SELF_REVIEW")
    assert api.get(f"/v1/jobs/{job['id']}", "op-jinshu").json()["state"] == "in_review"


def test_a_look_alike_supervisor_token_is_refused(api):
    api.token("root", role="admin")
    body = {"role": "supervisor", "subject": "supervis\u043er-li"}
    err = assert_error(api.post("/v1/admin/tokens", "root", json=body), 400, "BAD_REQUEST")
    assert "principal id" in err["message"]
    body = {"role": "operator", "subject": "OP-Jinshu"}
    assert api.post("/v1/admin/tokens", "root", json=body).json()["subject"] == "op-jinshu"


# --- audit checkpoints after every job, pushed to a witness -----------------------


def _wait_for(check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)
    return check()


def test_every_finished_job_is_signed_and_sent_to_the_witness(make_api, tmp_path):
    import http.server
    import threading

    received: list[dict] = []

    class Witness(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server API
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):  # quiet
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Witness)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    witness_file = tmp_path / "off-host" / "witness.jsonl"
    witness_file.parent.mkdir()
    try:
        api = make_api(
            checkpoint_every=10_000,
            audit_witness_file=witness_file,
            audit_witness_url=f"http://127.0.0.1:{server.server_port}/cp",
        )
        job = api.submit("op-huaxin", ENTERPRISE_SQL, "sme-credit", 1.0).json()
        assert api.wait(job["id"], "op-huaxin")["state"] == "released"
        conn = api.service.conn()
        (released,) = [e.seq for e in audit.events(conn, action="job.released")]
        assert _wait_for(lambda: audit.checkpoints(conn)[-1:][0]["tree_size"] >= released)
        assert _wait_for(lambda: received and received[-1]["tree_size"] >= released)
        # the file is written before the POST: it holds every checkpoint the URL got
        lines = [json.loads(x) for x in witness_file.read_text().splitlines()]
        assert {c["tree_size"] for c in received} <= {c["tree_size"] for c in lines}
        assert max(c["tree_size"] for c in lines) >= released
        assert all(c["format"] == audit.CHECKPOINT_FORMAT for c in received)
        report = api.service.audit_verify(api.service.authenticate(api.token("supervisor-li")))
        assert report["ok"] and report["signed_size"] >= released
    finally:
        server.shutdown()
        server.server_close()


def test_a_refused_job_is_signed_too(make_api):
    api = make_api(checkpoint_every=10_000)
    resp = api.submit("op-huaxin", "SELECT * FROM enterprises", "sme-credit", 1.0)
    assert resp.status_code == 400
    conn = api.service.conn()
    (refused,) = [e.seq for e in audit.events(conn, action="job.refused")]
    assert audit.checkpoints(conn)[-1]["tree_size"] >= refused


def test_a_witness_inside_home_is_refused(make_api, api_settings):
    from sandbox.errors import BadInput

    with pytest.raises(BadInput, match="inside SANDBOX_HOME"):
        make_api(audit_witness_file=api_settings.home / "witness.jsonl")
    with pytest.raises(BadInput, match="http"):
        make_api(audit_witness_url="file:///etc/passwd")


def test_405_names_every_method_the_path_accepts(api):
    """RFC 9110: a 405 carries Allow; /v1/jobs is two routes (GET and POST), both named."""
    for method, path, allowed in (
        ("DELETE", "/v1/jobs", "GET, POST"),
        ("PUT", "/v1/health", "GET"),
        ("DELETE", "/v1/jobs/j-nope", "GET"),
        ("GET", "/v1/review/j-nope", "POST"),
        ("DELETE", "/v1/admin/tokens", "GET, POST"),
    ):
        resp = api.call(method, path, "op-huaxin")
        assert assert_error(resp, 405, "BAD_REQUEST")["hint"] == f"This path accepts {allowed}."
        assert resp.headers["Allow"] == allowed, (method, path)
    assert "Allow" not in api.get("/v1/no-such-thing").headers
