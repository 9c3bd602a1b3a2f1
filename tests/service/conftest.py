"""A ``Service`` on the local executor for the service tests."""

from __future__ import annotations

import pytest

from sandbox.service import Service
from sandbox.settings import Settings


@pytest.fixture()
def svc(settings: Settings):
    service = Service(settings.replace(executor="local"))
    yield service
    service.stop()
