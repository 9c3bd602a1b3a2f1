"""The DP peers' own virtual environments (bench/.venvs/<peer>, not in git).

Each peer is installed with ``python3 -m venv`` + pip into its own environment so
its pins never touch this project's. A peer that cannot be installed (no network,
no Java for Tumult, a failing build) is skipped with the reason, never fatal.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

VENVS = Path(__file__).resolve().parent / ".venvs"


@dataclass(frozen=True)
class Peer:
    name: str  # system name in the results
    venv: str
    module: str  # bench.peers.<module>
    packages: tuple[str, ...]
    probe: str  # an import that proves the install works
    label: str
    slow: bool = False  # seconds to minutes per query: run after the fast systems


PEERS = {
    "opendp": Peer(
        "opendp",
        "opendp",
        "opendp_polars",
        ("opendp[polars]",),
        "opendp.prelude, polars",
        "OpenDP Polars",
    ),
    "smartnoise": Peer(
        "smartnoise",
        "smartnoise",
        "smartnoise",
        ("smartnoise-sql", "pandas", "pyarrow"),
        "snsql, pandas, pyarrow",
        "SmartNoise SQL",
        slow=True,
    ),
    "tumult": Peer(
        "tumult",
        "tumult",
        "tumult",
        ("tmlt.analytics",),
        "tmlt.analytics, pyspark",
        "Tumult Analytics",
        slow=True,
    ),
}


def python_of(peer: Peer) -> Path:
    return VENVS / peer.venv / "bin" / "python"


def ensure_peer(peer: Peer, *, log: Path, install: bool = True) -> str | None:
    """Make the peer's venv usable; return None when ready, else why it is skipped."""
    if peer.name == "tumult" and shutil.which("java") is None:
        return "no java on PATH (Tumult needs Java 17 for Spark)"
    py = python_of(peer)
    if _probe(py, peer.probe):
        return None
    if not install:
        return f"not installed in {py.parent.parent} (run without --no-install)"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as out:
        if not py.exists():
            made = subprocess.run(
                [sys.executable, "-m", "venv", str(VENVS / peer.venv)], stdout=out, stderr=out
            )
            if made.returncode != 0:
                return f"could not create its virtualenv (see {log})"
        pip = subprocess.run(
            [str(py), "-m", "pip", "install", "-q", *peer.packages], stdout=out, stderr=out
        )
    if pip.returncode != 0:
        return f"pip install {' '.join(peer.packages)} failed (see {log})"
    if not _probe(py, peer.probe):
        return f"installed but `import {peer.probe}` fails (see {log})"
    return None


def _probe(py: Path, modules: str) -> bool:
    if not py.exists():
        return False
    done = subprocess.run([str(py), "-c", f"import {modules}"], capture_output=True, timeout=300)
    return done.returncode == 0
