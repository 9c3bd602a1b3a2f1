"""Response models: every success answer in /openapi.json is typed, and live answers
match their schema field for field (nothing undeclared, nothing dropped or recast)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from api_helpers import ENTERPRISE_SQL, POPULATION_SQL
from jsonschema import Draft202012Validator

from sandbox.errors import ExecutionFailed

QUERIES = Path(__file__).resolve().parents[2] / "queries"

JSON = "application/json"


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def success_schema(
    spec: dict[str, Any], path: str, method: str, status: str | None = None
) -> dict[str, Any]:
    """The JSON schema of an operation's 2xx answer (``status``, or its only one; POST
    /v1/jobs has two: 201 a new job, 200 a replay); it must name its fields."""
    op = spec["paths"][path][method]
    if status is None:
        (status,) = [s for s in op["responses"] if s.startswith("2")]
    schema: dict[str, Any] = op["responses"][status]["content"][JSON]["schema"]
    body = _resolve(spec, schema)
    item = _resolve(spec, body["items"]) if body.get("type") == "array" else body
    assert item.get("properties"), f"{method.upper()} {path}: {status} is an untyped object"
    return schema


def _closed(node: Any) -> Any:
    """The schema with every described object closed: a field the model does not name
    fails validation (the models allow extras so that the server never drops one)."""
    if isinstance(node, dict):
        out = {k: _closed(v) for k, v in node.items()}
        if "properties" in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_closed(v) for v in node]
    return node


def assert_strictly_equal(got: Any, want: Any, where: str = "") -> None:
    """Equal, and of the same JSON types (1 is not 1.0: a signed manifest depends on it)."""
    assert type(got) is type(want), f"{where}: {got!r} is not {want!r}"
    if isinstance(want, dict):
        assert set(got) == set(want), f"{where}: fields {set(got) ^ set(want)}"
        for k in want:
            assert_strictly_equal(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_strictly_equal(g, w, f"{where}[{i}]")
    else:
        assert got == want, where


def assert_matches(spec: dict[str, Any], method: str, route: str, resp: Any) -> Any:
    """The answer is a success and validates against its operation's closed schema."""
    assert resp.status_code in (200, 201), resp.text
    closed = _closed({"components": spec["components"]})
    schema = _closed(success_schema(spec, route, method, str(resp.status_code)))
    Draft202012Validator({**closed, **schema}).validate(resp.json())
    return resp.json()


def test_every_success_response_names_its_fields(api):
    spec = api.get("/openapi.json").json()
    seen = 0
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for status in [s for s in op["responses"] if s.startswith("2")]:
                content = op["responses"][status].get("content")
                assert content, f"{method.upper()} {path}: {status} has no content"
                for media_type, body in content.items():
                    if media_type == JSON:
                        success_schema(spec, path, method, status)
                    else:  # a file or a PEM key: bytes, not an object
                        assert body["schema"]["type"] == "string", (path, media_type)
                    seen += 1
    assert seen >= 22


def test_live_responses_match_their_schema_and_the_service(api):
    spec = api.get("/openapi.json").json()
    svc = api.service
    operator = svc.authenticate(api.token("op-huaxin"))
    supervisor = svc.authenticate(api.token("supervisor-li"))

    def check(method: str, path: str, who: str | None, route: str = "", **kw: Any) -> Any:
        resp = api.call(method.upper(), path, who, **kw)
        return assert_matches(spec, method, route or path.split("?")[0], resp)

    explain = {"sql": ENTERPRISE_SQL, "scenario": "sme-credit", "epsilon": 1.0}
    check("post", "/v1/explain", "op-huaxin", json=explain)
    job = check("post", "/v1/jobs", "op-huaxin", json=explain)
    api.wait(job["id"], "op-huaxin")
    held = api.submit("op-jinshu", POPULATION_SQL, "employment-income", 1.0).json()
    api.wait(held["id"], "op-jinshu")
    reads = [  # (route, path, who, the service's own answer)
        ("/v1/health", "/v1/health", None, None),
        ("/v1/catalog", "/v1/catalog", "op-huaxin", svc.catalog_view(operator)),
        ("/v1/grants", "/v1/grants", "supervisor-li", svc.grants_view(supervisor)),
        ("/v1/jobs/{job_id}", f"/v1/jobs/{job['id']}", "op-huaxin", None),
        ("/v1/jobs/{job_id}", f"/v1/jobs/{held['id']}", "supervisor-li", None),
        ("/v1/jobs", "/v1/jobs", "supervisor-li", svc.list_jobs(supervisor)),
        ("/v1/budget", "/v1/budget", "op-huaxin", svc.budget(operator)),
        ("/v1/review", "/v1/review", "supervisor-li", svc.review_queue(supervisor)),
        (
            "/v1/products/{product_id}/manifest",
            f"/v1/products/{job['id']}/manifest",
            "op-huaxin",
            svc.product_manifest(operator, job["id"]),
        ),
    ]
    for route, path, who, direct in reads:
        got = check("get", path, who, route)
        if direct is not None:  # what the service said, unchanged by the model
            assert_strictly_equal(got, json.loads(json.dumps(direct)), path)
    assert_strictly_equal(
        check("get", f"/v1/jobs/{held['id']}", "supervisor-li", "/v1/jobs/{job_id}"),
        json.loads(json.dumps(svc.get_job(supervisor, held["id"]))),
    )
    decided = check(
        "post",
        f"/v1/review/{held['id']}",
        "supervisor-li",
        "/v1/review/{job_id}",
        json={"decision": "approve", "reason": "large counts"},
    )
    assert decided["job"]["product"]["href"] == f"/v1/jobs/{held['id']}/product"
    check("get", "/v1/audit?limit=1000", "supervisor-li")
    check("get", "/v1/audit/verify", "supervisor-li")
    report = check("get", "/v1/reports", "supervisor-li")
    assert_strictly_equal(
        report["groups"], json.loads(json.dumps(svc.reports(supervisor)))["groups"]
    )
    api.token("root", role="admin")
    issued = check(
        "post", "/v1/admin/tokens", "root", json={"role": "operator", "subject": "op-huaxin"}
    )
    check("get", "/v1/admin/tokens", "root")
    check(
        "post",
        f"/v1/admin/tokens/{issued['id']}/revoke",
        "root",
        "/v1/admin/tokens/{token_id}/revoke",
    )
    check("post", "/v1/admin/grants/reload", "root")


def test_a_field_the_model_does_not_name_is_passed_through(api):
    """Extras are kept, never dropped: a view that grows a field loses nothing."""
    from sandbox.api.models import JobView

    spec = api.get("/openapi.json").json()
    assert spec["components"]["schemas"]["JobView"]["additionalProperties"] is True
    job = api.submit("op-huaxin", ENTERPRISE_SQL, "sme-credit", 1.0).json()
    job["cost"]["new_field"] = [1, 2.0]
    dumped = JobView.model_validate(job).model_dump(mode="json", exclude_unset=True)
    assert_strictly_equal(dumped, job)


def test_every_demo_query_matches_the_schema(api):
    """Counts, sums, means, quantiles, private keys, zCDP: explain and the job views
    (an operator's and a supervisor's, with accuracy and preview) fit their models."""
    spec = api.get("/openapi.json").json()
    supervisor = api.service.authenticate(api.token("supervisor-li"))
    queries = sorted(QUERIES.glob("*.sql"))
    assert len(queries) >= 10
    for path in queries:
        text = path.read_text()
        header = dict(re.findall(r"^-- (operator|scenario): (\S+)$", text, re.M))
        operator = header["operator"]
        body: dict[str, Any] = {"sql": text, "scenario": header["scenario"], "epsilon": 1.0}
        explained = assert_matches(
            spec, "post", "/v1/explain", api.post("/v1/explain", operator, json=body)
        )
        body["delta"] = explained["cost"]["requested_delta"]
        job = assert_matches(spec, "post", "/v1/jobs", api.post("/v1/jobs", operator, json=body))
        assert api.wait(job["id"], operator)["state"] in ("in_review", "released"), path.name
        for who in (operator, "supervisor-li"):
            got = api.get(f"/v1/jobs/{job['id']}", who)
            assert_matches(spec, "get", "/v1/jobs/{job_id}", got)
        want = json.loads(json.dumps(api.service.get_job(supervisor, job["id"])))
        assert_strictly_equal(got.json(), want, path.name)
    assert_matches(spec, "get", "/v1/review", api.get("/v1/review", "supervisor-li"))


class FailingExecutor:
    def run(self, plan: Any, *, data_root: Any, job_id: str) -> Any:
        raise ExecutionFailed("memory")


def test_a_failed_job_and_its_alert_match_the_schema(make_api):
    api = make_api(executor=FailingExecutor())
    spec = api.get("/openapi.json").json()
    job = api.submit("op-huaxin", ENTERPRISE_SQL, "sme-credit", 1.0).json()
    assert api.wait(job["id"], "op-huaxin")["state"] == "failed"
    for who in ("op-huaxin", "supervisor-li"):
        seen = assert_matches(
            spec, "get", "/v1/jobs/{job_id}", api.get(f"/v1/jobs/{job['id']}", who)
        )
    assert seen["error"]["diagnosis"]["stage"] == "execute"  # a supervisor's view
    report = assert_matches(spec, "get", "/v1/reports", api.get("/v1/reports", "supervisor-li"))
    assert [a["kind"] for a in report["alerts"]] == ["resource_limit"]
