"""Schemathesis against the published OpenAPI schema: no request makes the server fail."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error


@pytest.fixture()
def api_schema(make_api, request):
    api = make_api(rate_per_minute=1_000_000)
    request.node.api = api
    return schemathesis.openapi.from_asgi("/openapi.json", api.client.app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_makes_the_server_fail(case, request):
    api = request.node.api
    headers = {"Authorization": f"Bearer {api.token('op-jinshu')}"}
    response = case.call_and_validate(headers=headers, checks=[not_a_server_error])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and {"code", "message", "hint"} <= set(body["error"])
