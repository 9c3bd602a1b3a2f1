"""The per-token request rate limit."""

from __future__ import annotations

import pytest

from sandbox.errors import RateLimited
from sandbox.service import RateLimiter


def test_rate_limiter_window():
    now = [0.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    limiter.hit("a")
    limiter.hit("a")
    with pytest.raises(RateLimited):
        limiter.hit("a")
    limiter.hit("b")
    now[0] = 60.0
    limiter.hit("a")
