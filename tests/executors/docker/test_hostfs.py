"""The host side of a run: /out on its own size-capped tmpfs (as root)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from docker_helpers import probe

PROBE_FILL_OUT = """
import errno, json, os
written, error = 0, None
try:
    for i in range(100000):
        with open(f"/out/f{i}", "wb") as fh:
            fh.write(b"x" * 256 * 1024)
        written += 256 * 1024
except OSError as exc:
    error = errno.errorcode.get(exc.errno)
for name in os.listdir("/out"):
    os.unlink(os.path.join("/out", name))
json.dump({"written": written, "error": error}, open("/out/probe.json", "w"))
"""


@pytest.mark.container
def test_out_cannot_fill_the_hosts_disk(make_executor: Any, raw_root: Path) -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("the size-capped /out needs root on the host")
    executor = make_executor(output_max_bytes=1024 * 1024)
    seen, _ = probe(executor, raw_root, PROBE_FILL_OUT)
    assert seen["error"] == "ENOSPC"
    assert seen["written"] <= 3 * 1024 * 1024  # 2 x output_max_bytes + 1 MiB
