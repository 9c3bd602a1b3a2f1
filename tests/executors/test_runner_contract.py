"""The runner/host contract (sandbox_runner.contract): both sides speak it.

The runner writes what the host reads: every failure category the runner can emit
is one the host knows (an ``EXECUTION_FAILED`` error with that category, not
collapsed to ``engine_error``); the spec a Plan makes carries the version the runner
accepts; the status the runner writes survives the host's reader; the limits the
host sets are the environment variables the runner reads.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import sandbox_runner.__main__ as runner_main
from executor_helpers import make_plan
from sandbox_runner import contract
from sandbox_runner.executor import RunnerFailure, execute

from sandbox.errors import CATEGORIES, CODES, ExecutionFailed
from sandbox.executors import runner_spec
from sandbox.executors.docker.containers import runner_env
from sandbox.executors.output import read_status, status_category
from sandbox.settings import Settings


@pytest.mark.parametrize("category", contract.CATEGORIES)
def test_every_runner_category_is_an_error_on_the_host(category: str) -> None:
    assert RunnerFailure(category).category == category
    assert category in CATEGORIES
    failed = ExecutionFailed(category)
    assert failed.category == category
    assert failed.code in CODES
    assert failed.to_dict()["error"]["category"] == category
    assert status_category({"status": contract.STATUS_FAILED, "category": category}) == category


def test_a_plans_spec_has_the_version_the_runner_accepts(tmp_path: Path) -> None:
    spec = runner_spec(make_plan(), Settings(home=tmp_path / "home"))
    assert spec["version"] == contract.SPEC_VERSION


def test_the_status_the_runner_writes_is_what_the_host_reads(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    spec = make_plan().runner_spec()
    spec["version"] = contract.SPEC_VERSION + 1
    execute(spec, tmp_path, out)
    assert sorted(p.name for p in out.iterdir()) == [contract.STATUS_FILE]
    assert read_status(out) == {"status": contract.STATUS_FAILED, "category": "plan_mismatch"}


ENV_NAMES = {name for name in vars(contract) if name.startswith("ENV_")}
DIR_OVERRIDES = {"ENV_PLAN_DIR", "ENV_OUT_DIR", "ENV_DATA_DIR", "ENV_SCRATCH_DIR"}


def test_the_runner_reads_every_variable_by_the_contracts_name() -> None:
    tree = ast.parse(inspect.getsource(runner_main))
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "c"
    }
    assert used >= ENV_NAMES
    literals = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("RUNNER_")
    ]
    assert literals == []


def test_the_host_sets_the_limits_the_runner_reads(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    cold = runner_env(settings, warm=False)
    warm = runner_env(settings, warm=True)
    expected = {getattr(contract, name) for name in ENV_NAMES - DIR_OVERRIDES}
    assert {k for k in warm if k.startswith("RUNNER_")} == expected
    assert set(warm) - set(cold) == {contract.ENV_WAIT_S}


def test_the_runners_crash_code_is_the_contracts() -> None:
    assert runner_main.EXIT_CRASHED == contract.EXIT_CRASHED
    codes = {contract.EXIT_OK, contract.EXIT_FAILED, contract.EXIT_CRASHED, contract.EXIT_IDLE}
    assert len(codes) == 4
