"""The Plan's shared parts: quantile candidates (one definition, used by the compiler)."""

from __future__ import annotations

import pytest

from sandbox.plan import quantile_candidates


def test_quantile_candidates() -> None:
    assert quantile_candidates(0, 100, True) == tuple(float(i) for i in range(101))
    wide = quantile_candidates(0, 50_000, True)
    assert len(wide) == 1000 and wide[0] == 0 and wide[-1] == 50_000
    assert wide[1] - wide[0] == pytest.approx(50_000 / 999)
    floats = quantile_candidates(-1.0, 1.0, False)
    assert len(floats) == 1000 and floats[-1] == 1.0
    with pytest.raises(ValueError):
        quantile_candidates(1, 1, True)


def test_quantile_candidates_have_one_definition_the_compiler_and_privacy_share() -> None:
    """The compiler picks the candidates the privacy layer scores: one function, in
    sandbox/plan.py (the compiler must not depend on the release machinery)."""
    import ast
    from pathlib import Path

    import sandbox
    import sandbox.compiler
    import sandbox.compiler.measures
    import sandbox.privacy

    root = Path(sandbox.__file__).parent
    defined = [
        str(path.relative_to(root))
        for path in sorted(root.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef) and node.name == "quantile_candidates"
    ]
    assert defined == ["plan.py"]
    assert sandbox.compiler.quantile_candidates is quantile_candidates
    assert sandbox.compiler.measures.quantile_candidates is quantile_candidates
    assert sandbox.privacy.quantile_candidates is quantile_candidates
