"""CI walks the README as a new user would, on a clean Python.

A fresh venv (no system site packages) gets ONLY ``pip install -e .`` (no extras);
``sandbox up`` runs on its own home and a free port; then the README's operator
walk-through: explain, submit the README's query, approve it as a supervisor, download
the product and verify it. Any other outcome than a verified released product fails.
The server is stopped (its own process group) and its containers removed at the end.

Run: ``python3 .ci/readme_walk.py`` (``.ci/test`` does). Keeps its files with --keep.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
UP_TIMEOUT_S = 240
STEP_TIMEOUT_S = 180


def say(message: str) -> None:
    print(f"readme-walk: {message}", flush=True)


def fail(message: str) -> None:
    print(f"readme-walk: FAILED: {message}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def readme_commands() -> dict[str, list[str]]:
    """The README's operator walk-through, as the README writes it."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## First steps as an operator.*?```bash\n(.*?)```", text, re.S)
    if block is None:
        fail("README has no 'First steps as an operator' bash block")
    found: dict[str, list[str]] = {}
    for line in block.group(1).splitlines():
        words = line.split()
        if len(words) > 1 and words[0] == "sandbox" and words[1] in ("explain", "submit"):
            found[words[1]] = words
    if set(found) != {"explain", "submit"}:
        fail(f"README walk-through lacks sandbox explain/submit: {sorted(found)}")
    return found


def run(env: dict[str, str], *args: str, token: str | None = None, cwd: Path) -> str:
    full = dict(env)
    if token is not None:
        full["SANDBOX_TOKEN"] = token
    shown = " ".join(args)
    say(f"$ {shown}")
    done = subprocess.run(
        list(args), env=full, cwd=cwd, capture_output=True, text=True, timeout=STEP_TIMEOUT_S
    )
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr[-4000:])
    if done.returncode != 0:
        fail(f"`{shown}` exited {done.returncode}")
    return done.stdout


def wait_up(proc: subprocess.Popen[bytes], log: Path, url: str) -> dict[str, str]:
    """Tokens printed by `sandbox up` (role -> token), once its server answers."""
    deadline = time.monotonic() + UP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"`sandbox up` exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/v1/health", timeout=2) as r:  # noqa: S310
                if r.status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.5)
    else:
        fail(f"`sandbox up` did not serve within {UP_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
    tokens: dict[str, str] = {}
    for line in log.read_text().splitlines():
        m = re.match(r"^\s+(operator|supervisor|admin)\s+(\S+)\s+(\S+)\s*$", line)
        if m and m.group(1) not in tokens:
            tokens[m.group(1)] = m.group(3)
    if not {"operator", "supervisor"} <= set(tokens):
        fail(f"no operator/supervisor tokens in the output of `sandbox up`:\n{log.read_text()}")
    return tokens


def stop(proc: subprocess.Popen[bytes], venv_python: Path, home: Path) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C: uvicorn shuts down, warm runners go
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    # whatever this installation's server left in Docker (its own home label only)
    code = (
        "import docker, sys; from pathlib import Path; from sandbox.settings import Settings;"
        "from sandbox.executors.docker import home_label, sweep;"
        "c = docker.from_env(); sweep(c, home_label=home_label(Settings(home=Path(sys.argv[1]))))"
    )
    subprocess.run([str(venv_python), "-c", code, str(home)], timeout=120, check=False)


def main() -> None:
    keep = "--keep" in sys.argv
    started = time.monotonic()
    commands = readme_commands()
    tmp = Path(tempfile.mkdtemp(prefix="jinyu-readme-walk-"))
    venv = tmp / "venv"
    say(f"fresh venv in {venv} (no system site packages), `pip install -e .` only")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    cfg = (venv / "pyvenv.cfg").read_text()
    if "include-system-site-packages = false" not in cfg:
        fail("the venv sees system site packages")
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e", "."],
        cwd=ROOT,
        check=True,
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    home = tmp / "home"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SANDBOX_") and k not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    env.update(
        PATH=f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}",
        SANDBOX_HOME=str(home),
        SANDBOX_PORT=str(port),
        COLUMNS="250",  # rich wraps nothing: the token lines stay whole
    )
    log = tmp / "up.log"
    say(f"$ sandbox up  (home {home}, port {port})")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["sandbox", "up"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        tokens = wait_up(proc, log, url)
        say(f"served after {time.monotonic() - started:.0f} s")
        # the README: export SANDBOX_URL=… SANDBOX_TOKEN=<operator token>
        env.update(SANDBOX_URL=url, SANDBOX_TOKEN=tokens["operator"])
        work = tmp / "work"
        shutil.copytree(ROOT / "queries", work / "queries")
        run(env, *commands["explain"], cwd=work)
        submitted = run(env, *commands["submit"], cwd=work)
        ids = re.findall(r"\bj-[0-9a-f]{6,}\b", submitted)
        if not ids:
            fail("`sandbox submit` printed no job id")
        job_id = ids[0]
        state = json.loads(run(env, "sandbox", "status", job_id, "--json", cwd=work))["state"]
        if state != "in_review":
            fail(f"job {job_id} is {state}, not in_review (README: general-3 waits for review)")
        run(
            env,
            *("sandbox", "review", "approve", job_id, "--reason", "README walk: large groups"),
            token=tokens["supervisor"],
            cwd=work,
        )
        job = json.loads(run(env, "sandbox", "status", job_id, "--wait", "--json", cwd=work))
        if job["state"] != "released":
            fail(f"job {job_id} ended {job['state']}: {job.get('error')}")
        run(env, "sandbox", "result", job_id, "--output", "income.csv", cwd=work)
        with urllib.request.urlopen(f"{url}/v1/keys/products", timeout=10) as r:  # noqa: S310
            (work / "products.pub").write_bytes(r.read())
        run(
            env,
            *("sandbox", "product", "verify", "income.csv", "--public-key", "products.pub"),
            cwd=work,
        )
        if not (work / "income.csv").stat().st_size:
            fail("the product is empty")
        say(f"released and verified in {time.monotonic() - started:.0f} s")
    except BaseException:
        print(log.read_text()[-6000:], file=sys.stderr)
        raise
    finally:
        stop(proc, py, home)
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
