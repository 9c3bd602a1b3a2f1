"""Strip the runner's Python libraries down to what the executor imports.

Run by both build paths (the Dockerfile and the offline rootfs build) on the
directory pip installed duckdb and pyarrow into: ``python3 strip_pylib.py DIR``.
Standard library only. Removes tests, C/C++ headers and Cython sources, type stubs,
pyarrow modules the executor never loads (Flight RPC, cloud file systems, ORC,
HDFS) and replaces pyarrow's duplicated shared-library copies with symlinks.
The build's smoke test imports duckdb, pyarrow, pyarrow.parquet, pyarrow.compute
and pyarrow.dataset afterwards, so a strip that goes too far fails the build.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

REMOVE_DIRS = ("pyarrow/tests", "pyarrow/include", "pyarrow/src", "_duckdb-stubs", "bin")
# Optional pyarrow parts: pyarrow imports each of these inside try/except ImportError.
REMOVE_GLOBS = (
    "pyarrow/libarrow_flight.so*",
    "pyarrow/libarrow_python_flight.so*",
    "pyarrow/_flight.*.so",
    "pyarrow/libarrow_s3.so*",
    "pyarrow/_s3fs.*.so",
    "pyarrow/_gcsfs.*.so",
    "pyarrow/_azurefs.*.so",
    "pyarrow/_hdfs.*.so",
    "pyarrow/_orc.*.so",
    "pyarrow/_dataset_orc.*.so",
    "pyarrow/_pyarrow_cpp_tests.*.so",
)
# The analysis libraries' own test suites (never imported by them; pandas' alone is large).
REMOVE_TEST_DIRS_IN = ("pandas", "numpy", "scipy", "statsmodels", "matplotlib", "patsy")
REMOVE_SUFFIXES = (".pyx", ".pxd", ".pxi", ".h", ".hpp", ".cc", ".cpp", ".pyi", ".pyc")


def strip(lib: Path) -> int:
    """Strip ``lib`` in place; return the number of bytes freed."""
    before = _size(lib)
    for rel in REMOVE_DIRS:
        shutil.rmtree(lib / rel, ignore_errors=True)
    for pkg in REMOVE_TEST_DIRS_IN:
        for tests in sorted(lib.glob(f"{pkg}/**/tests"), reverse=True):
            if tests.is_dir() and not tests.is_symlink():
                shutil.rmtree(tests, ignore_errors=True)
    for pattern in REMOVE_GLOBS:
        for path in lib.glob(pattern):
            path.unlink()
    for path in list(lib.rglob("*")):
        if path.is_dir() and path.name == "__pycache__":
            shutil.rmtree(path)
        elif path.is_file() and not path.is_symlink() and path.suffix in REMOVE_SUFFIXES:
            path.unlink()
    _dedupe_sonames(lib / "pyarrow")
    return before - _size(lib)


def _dedupe_sonames(pkg: Path) -> None:
    """libX.so, libX.so.N and libX.so.N.M.P are byte-identical copies in the wheel."""
    if not pkg.is_dir():
        return
    for real in sorted(pkg.glob("lib*.so.*.*.*")):
        stem = real.name.split(".so.")[0] + ".so"
        major = real.name.split(".so.")[0] + ".so." + real.name.split(".so.")[1].split(".")[0]
        for alias in (pkg / stem, pkg / major):
            if alias.is_file() and not alias.is_symlink() and _same(alias, real):
                alias.unlink()
                alias.symlink_to(real.name)


def _same(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


def _size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                total += os.path.getsize(path)
    return total


if __name__ == "__main__":
    freed = strip(Path(sys.argv[1]))
    print(f"stripped {freed / 1e6:.0f} MB")
