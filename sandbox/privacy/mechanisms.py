"""OpenDP measurement builders and the quantile scores fed to them.

Every random number the privacy layer draws comes from a measurement built here:
vector (discrete) Laplace/Gaussian noise, noisy max over quantile scores, and the
Laplace/Gaussian thresholds of partition selection. Builders are cached by their
parameters. The quantile scores are OpenDP's, computed from the runner's histogram.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from sandbox.errors import SystemFailure

if TYPE_CHECKING:
    from sandbox.plan import Measure

__all__ = [
    "SCALE_SLACK",
    "histogram_alpha",
    "load_opendp",
    "noisy_max",
    "partition_threshold",
    "threshold_noise",
    "quantile_alpha_fraction",
    "quantile_score_array",
    "quantile_scores",
    "vector_noise",
    "zcdp_conversion",
    "zcdp_epsilon",
]

SCALE_SLACK = 1e-9  # relative bump when OpenDP's map rounds a hair above the target


def load_opendp() -> Any:
    """OpenDP's prelude with the contrib features this package uses enabled."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


@lru_cache(maxsize=512)
def vector_noise(scale: float, pure: bool, integer: bool) -> Any:
    """(Discrete) Laplace (pure) or Gaussian (zCDP) noise over a vector of values."""
    dp = load_opendp()
    atom = dp.atom_domain(T="i64") if integer else dp.atom_domain(T=float, nan=False)
    dom = dp.vector_domain(atom)
    if pure:
        metric = dp.l1_distance(T="i64") if integer else dp.l1_distance(T=float)
        return dp.m.make_laplace(dom, metric, scale=scale)
    return dp.m.make_gaussian(dom, dp.l2_distance(T=float), scale=scale)


@lru_cache(maxsize=512)
def noisy_max(scale: float, pure: bool) -> Any:
    """Report-noisy-min over quantile scores (lower is better): the chosen index."""
    dp = load_opendp()
    space = dp.vector_domain(dp.atom_domain(T="u64")), dp.linf_distance(T="u64")
    measure = dp.max_divergence() if pure else dp.zero_concentrated_divergence()
    return dp.m.make_noisy_max(*space, measure, scale=scale, negate=True)


@lru_cache(maxsize=512)
def partition_threshold(scale: float, threshold: int, pure: bool) -> Any:
    """Partition selection: noisy counts per key, only those above ``threshold`` kept."""
    dp = load_opendp()
    dom = dp.map_domain(dp.atom_domain(T="i64"), dp.atom_domain(T="i64"))
    if pure:
        metric = dp.l01inf_distance(dp.absolute_distance(T="i64"))
        return dp.m.make_laplace_threshold(dom, metric, scale=scale, threshold=threshold)
    metric = dp.l02inf_distance(dp.absolute_distance(T="i64"))
    return dp.m.make_gaussian_threshold(dom, metric, scale=scale, threshold=threshold)


def threshold_noise(scale: float, threshold: int, pure: bool) -> Any:
    """``partition_threshold``'s output over a vector: noisy counts and which to keep.

    OpenDP's threshold measurement samples each count's noise independently and keeps
    the keys whose noisy count is at least the threshold; sampling the same noise
    with OpenDP's vector measurement and comparing afterwards is the same
    distribution, key by key. It takes a NumPy array, so a runner's two million groups
    cross into OpenDP in one buffer instead of a Python dict of two million entries
    (the accounting still asks ``partition_threshold`` for its privacy map).
    """
    import numpy as np

    meas = vector_noise(scale, pure, True)

    def run(counts: Any) -> tuple[Any, Any]:
        noisy = np.asarray(meas(np.array(counts, dtype=np.int64)), dtype=np.int64)
        return noisy, noisy >= threshold

    return run


@lru_cache(maxsize=1)
def _zcdp_to_approx() -> tuple[Any, Any]:
    """A unit-scale Gaussian (its map at d_in is d_in²/2 = ρ) and OpenDP's
    ``make_zCDP_to_approxDP`` of it: the ρ → (ε, δ) conversion for any ρ."""
    dp = load_opendp()
    base = dp.m.make_gaussian(
        dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale=1.0
    )
    return base, dp.c.make_zCDP_to_approxDP(base)


def zcdp_conversion(rho: float, delta: float) -> tuple[float, float]:
    """(ρ′, ε): OpenDP's own (ε, δ) for ρ′-zCDP at ``delta``, where ρ′ is the ρ OpenDP
    converts (``rho`` up to an ulp of OpenDP's rounding). The conversion is
    ``make_zCDP_to_approxDP`` (the Canonne–Kamath–Steinke bound), tighter than the
    classic ε = ρ + 2√(ρ ln(1/δ))."""
    base, conv = _zcdp_to_approx()
    d_in = math.sqrt(2.0 * rho)
    return float(base.map(d_in)), float(conv.map(d_in).epsilon(delta))


def zcdp_epsilon(rho: float, delta: float) -> float:
    """OpenDP's own (tighter) ε for ρ-zCDP at ``delta``."""
    return zcdp_conversion(rho, delta)[1]


@lru_cache(maxsize=256)
def quantile_alpha_fraction(alpha: float) -> tuple[int, int]:
    """(numerator, denominator) that OpenDP uses for ``alpha``, read from OpenDP itself:
    with one candidate 0, the score of the data [1] is the numerator and of [-1] is
    denominator − numerator."""
    dp = load_opendp()
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.symmetric_distance()
    t = dp.t.make_quantile_score_candidates(*space, candidates=[0], alpha=alpha)
    num = int(t([1])[0])
    return num, num + int(t([-1])[0])


def quantile_scores(histogram: dict[int, int], n_candidates: int, alpha: float) -> list[int]:
    """OpenDP's quantile scores, from the runner's histogram instead of rows.

    Slot 2i+1 counts values equal to candidate i, slot 2i values strictly between
    candidates i−1 and i (slot 0 below the first, slot 2k above the last). OpenDP's
    score of candidate c is |(d−a)·#(x<c) − a·#(x>c)| (lower is better), with
    (a, d) = ``quantile_alpha_fraction(alpha)`` and counts capped at ⌊(2⁶⁴−1)/d⌋.
    """
    return [int(v) for v in quantile_score_array(histogram, n_candidates, alpha)]


def quantile_score_array(histogram: dict[int, int], n_candidates: int, alpha: float) -> Any:
    """``quantile_scores`` as the unsigned array ``noisy_max`` takes."""
    import numpy as np  # arithmetic only: every random draw is OpenDP's

    num, den = quantile_alpha_fraction(alpha)
    slots = np.zeros(2 * n_candidates + 1, dtype=np.int64)
    for slot, count in histogram.items():
        if not 0 <= slot <= 2 * n_candidates:
            raise SystemFailure("A histogram slot is outside the candidates.", code="INTERNAL")
        slots[slot] += count
    n = int(slots.sum())
    if n * den >= 2**63:
        raise SystemFailure("Too many rows for exact quantile scores.", code="INTERNAL")
    before = np.concatenate(([0], np.cumsum(slots)))  # before[j] = rows in slots < j
    lt = before[0 : 2 * n_candidates : 2] + slots[0 : 2 * n_candidates : 2]
    le = lt + slots[1 : 2 * n_candidates : 2]
    gt = n - le
    return np.abs((den - num) * lt - num * gt).astype(np.uint64)


def histogram_alpha(m: Measure) -> float:
    """A histogram measure's α, refused (INTERNAL) without α in [0, 1] and candidates."""
    if m.alpha is None or not 0 <= m.alpha <= 1 or not m.candidates:
        raise SystemFailure(f"Histogram {m.name} needs alpha and candidates.", code="INTERNAL")
    return float(m.alpha)
