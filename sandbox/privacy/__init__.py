"""The differential-privacy layer: budget split, OpenDP noise, partition selection, accuracy.

The runner gives us an *exact* table (one row per group: keys + measures, see
``sandbox/plan.py``). This package turns it into a *noisy* one and only then runs the
Plan's ``post_sql`` over it. Every random number comes from an OpenDP measurement;
this package does arithmetic (sensitivities, budget split, scores) and bookkeeping.

Neighbouring datasets differ by adding or removing ONE privacy unit (e.g. one
person). After the compiler's bounding a unit contributes at most ``R =
plan.unit_rows`` rows to the whole query and touches at most ``G = plan.unit_groups``
groups. Per measure, over the vector of all groups at once:

========================  ===================  ====================
measure                   L1 (pure ε)          L2 (ρ-zCDP)
========================  ===================  ====================
count (rows)              R                    R
sum, clamped [lo, hi]     R·max(|lo|, |hi|)    R·max(|lo|, |hi|)
count_units (distinct)    G                    √G
histogram → quantile      score L∞ = R·max(a, d−a) per group (see below)
========================  ===================  ====================

(L2 for rows is not smaller than L1: a unit may put all R rows in one group.) Float
sums add OpenDP's floating-point relaxation τ for sums of at most R × the dataset's
declared ``max_units`` rows (``float_sum_rows``; the runner refuses a table with more
units, ``sandbox.datacheck``): G·τ to L1 and √G·τ to L2. Quantiles use
OpenDP's exponential-mechanism scores (``make_quantile_score_candidates``), computed
here from the runner's histogram exactly as OpenDP computes them from rows, and
select with ``make_noisy_max``; a unit's R rows change the scores of the groups it
touches by at most R·max(a, d−a) in total, so one scale covers all groups.

``definition`` comes from the dataset policy: ``"pure"`` uses (discrete) Laplace
noise and basic composition; ``"zcdp"`` uses (discrete) Gaussian noise, and the
requested (ε, δ) is turned into the largest ρ whose OpenDP conversion
(``make_zCDP_to_approxDP``, the Canonne–Kamath–Steinke bound) is within ε at δ
(``rho_from_epsilon_delta``; about 1.4× the ρ of the classic ε = ρ + 2√(ρ ln 1/δ),
1.18× less noise at ε = 1, δ = 10⁻⁶).
Private group keys are released only through a noisy threshold on the distinct-unit
count (``make_laplace_threshold`` / ``make_gaussian_threshold``), which needs δ > 0.
At most ``plan.max_groups`` of the selected groups are released: those with the
largest NOISY distinct-unit counts (ties by a hash of the key), a post-processing of
the threshold's output. The cap is never applied to exact groups: a job whose outcome
changed when the exact group count crossed it would be an oracle (issue 20).

Modules (imports only go down this list, no cycles):

- ``mechanisms``: the OpenDP measurement builders (noise, noisy max, thresholds), the
  ρ → (ε, δ) conversion, and OpenDP's quantile scores from a histogram;
- ``accounting``: ε/δ validation against grant and policy, the budget split over
  measures, sensitivities and fitted scales (``plan_cost``, ``Cost``);
- ``propagation``: a derived output's half-width, by interval arithmetic over its noisy
  measures' boxes at a Bonferroni-split level (no data read, no random draw);
- ``accuracy``: 95% half-widths, quantile statements, ``explain``, per-cell
  half-widths, the published ± rounded outward;
- ``release``: noise, partition selection, the noisy cut to ``max_groups``, ``post_sql``;
- ``defaults``: the δ a query gets when none is asked (``choose_delta``,
  ``default_delta``), one rule for every path (dev run, explain, submit).

Quantile candidates are part of the Plan (``sandbox.plan.quantile_candidates``): the
compiler picks them, this package scores them.
"""

from __future__ import annotations

from sandbox.plan import MAX_CANDIDATES, quantile_candidates
from sandbox.privacy.accounting import (
    Cost,
    MeasureCost,
    check_cost,
    check_epsilon_delta,
    float_sum_rows,
    plan_cost,
    rho_from_epsilon_delta,
)
from sandbox.privacy.accuracy import explain
from sandbox.privacy.defaults import DEFAULT_DELTA_SHARE, choose_delta, default_delta, needs_delta
from sandbox.privacy.mechanisms import quantile_alpha_fraction, quantile_scores
from sandbox.privacy.release import Noisy, release

__all__ = [
    "Cost",
    "MeasureCost",
    "Noisy",
    "check_cost",
    "check_epsilon_delta",
    "choose_delta",
    "default_delta",
    "explain",
    "float_sum_rows",
    "needs_delta",
    "plan_cost",
    "quantile_alpha_fraction",
    "quantile_candidates",
    "quantile_scores",
    "release",
    "rho_from_epsilon_delta",
    "DEFAULT_DELTA_SHARE",
    "MAX_CANDIDATES",
]
