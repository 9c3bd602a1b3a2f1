"""The OpenDP side: quantile scores from a histogram equal OpenDP's own scores."""

from __future__ import annotations

import opendp.prelude as dp
import pytest

from sandbox.privacy import quantile_alpha_fraction, quantile_candidates, quantile_scores
from tests.privacy.factories import histogram_of

dp.enable_features("contrib")


# ------------------------------------------------------------------ quantiles


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.25, 0.3, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0, 1 / 3])
@pytest.mark.parametrize("integer", [True, False])
def test_quantile_scores_equal_opendp_scores_on_reconstructed_rows(alpha, integer) -> None:
    lower, upper = (0, 40) if integer else (-5.0, 5.0)
    cands = quantile_candidates(lower, upper, integer)
    if not integer:
        cands = cands[::50] + (upper,)  # fewer candidates; values fall between them
    values = [lower + ((i * 7919) % 97) * (upper - lower) / 96 for i in range(300)]
    values += [cands[3]] * 5 + [lower - 1, upper + 1]  # ties, below, above
    if integer:
        values = [float(round(v)) for v in values]
    hist = histogram_of(values, cands)
    ours = quantile_scores(hist, len(cands), alpha)
    T = float
    space = dp.vector_domain(dp.atom_domain(T=T, nan=False)), dp.symmetric_distance()
    t = dp.t.make_quantile_score_candidates(*space, candidates=list(cands), alpha=alpha)
    assert ours == list(t(values))
    num, den = quantile_alpha_fraction(alpha)
    assert t.map(1) == max(num, den - num)
