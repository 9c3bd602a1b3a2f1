"""The bench harness's memory cap (issue 17): an over-memory process is stopped and
reported, a process within the cap is not touched. Real processes, real cgroup or
RLIMIT_AS (whichever this machine gives), allocating real memory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is a folder of the repo, not an installed package
    sys.path.insert(0, str(ROOT))

from bench.measure import run_measured  # noqa: E402
from bench.memcap import make_cap  # noqa: E402

CAP = 256 * 2**20
# Touches every page, so resident memory really grows (and a cgroup sees it).
HOG = (
    "import sys\nchunks = []\nfor _ in range(int(sys.argv[1])):\n"
    "    chunks.append(bytearray(16 * 2**20))\nprint('survived')\n"
)


def _run(tmp_path: Path, chunks: int, *, rlimit_ok: bool = True) -> tuple[object, str]:
    err = tmp_path / f"hog-{chunks}.txt"
    m = run_measured(
        [sys.executable, "-c", HOG, str(chunks)],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        timeout_s=60,
        stderr_path=err,
        memory_cap_bytes=CAP,
        rlimit_ok=rlimit_ok,
    )
    return m, err.read_text()


def test_a_process_over_the_cap_is_stopped_and_reported(tmp_path: Path) -> None:
    m, output = _run(tmp_path, 64)  # 1 GiB against a 256 MiB cap
    assert "survived" not in output
    assert m.returncode != 0  # type: ignore[attr-defined]
    assert m.cap in {"cgroup v1", "cgroup v2", "RLIMIT_AS"}  # type: ignore[attr-defined]
    if m.cap.startswith("cgroup"):  # type: ignore[attr-defined]
        assert m.oom is True  # type: ignore[attr-defined]
        assert m.cgroup_peak_kb <= CAP // 1024 + 1024  # type: ignore[attr-defined]
    else:
        assert "MemoryError" in output
    assert m.peak_kb < 2 * CAP // 1024  # type: ignore[attr-defined]


def test_a_process_within_the_cap_runs_untouched(tmp_path: Path) -> None:
    m, output = _run(tmp_path, 4)  # 64 MiB
    assert "survived" in output
    assert m.returncode == 0 and m.oom is False  # type: ignore[attr-defined]


def test_the_cap_cgroup_is_removed_afterwards(tmp_path: Path) -> None:
    cap = make_cap(CAP, rlimit_ok=False)
    if cap is None:
        pytest.skip("no memory cgroup can be made here (the RLIMIT_AS path is tested above)")
    assert cap.cgroup is not None and cap.cgroup.is_dir()
    cap.close()
    assert not cap.cgroup.exists()
