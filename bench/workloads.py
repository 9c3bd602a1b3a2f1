"""The five benchmark workloads, written once and handed to every system.

Each workload has the operator's SQL (bare table names, as our compiler takes it;
raw DuckDB runs the same text, without DP, for the floor and the exact answer) and
the parameters every DP system gets identically: total privacy loss (ε = 1, δ only
where the query needs it), clamping bounds (the catalogue's), contribution bounds
(rows per person), public key sets and quantile candidates. The DP peers express
the same query in their own API (bench/peers/*.py) from these parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

EPSILON = 1.0
DELTA = 1e-6

# Grants in policies/grants.yaml that allow each dataset (operator op-jinshu).
GRANTS = {"population": "g-jinshu-employment", "social_insurance": "g-jinshu-pension"}

FILTER = {
    "age": [25, 60],
    "sex": "F",
    "employment": ["employed", "self_employed"],
    "income_gt": 3000,
}


@dataclass(frozen=True)
class Workload:
    id: str
    title: str
    dataset: str
    sql: str
    keys: tuple[str, ...]  # output key columns
    outputs: tuple[str, ...]  # output value columns (compared for accuracy)
    public_keys: bool
    epsilon: float = EPSILON
    delta: float = 0.0
    bounds: dict[str, list[float]] = field(default_factory=dict)
    rows_per_unit: int = 1
    median_candidates: list[int] | None = None

    @property
    def grant(self) -> str:
        return GRANTS[self.dataset]

    def spec(self) -> dict[str, Any]:
        """What a system script is told (plus data root, keys and runs from run.py)."""
        out = asdict(self)
        out["filter"] = FILTER
        return out


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        id="count_sum",
        title="count + bounded sum of income by county (117 public keys)",
        dataset="population",
        sql=(
            "SELECT county_code, COUNT(*) AS n, SUM(monthly_income) AS income_sum "
            "FROM persons GROUP BY county_code"
        ),
        keys=("county_code",),
        outputs=("n", "income_sum"),
        public_keys=True,
        bounds={"monthly_income": [0, 50000]},
    ),
    Workload(
        id="mean_median",
        title="mean and median of age by county (public keys)",
        dataset="population",
        sql=(
            "SELECT county_code, AVG(age) AS age_mean, MEDIAN(age) AS age_median "
            "FROM persons GROUP BY county_code"
        ),
        keys=("county_code",),
        outputs=("age_mean", "age_median"),
        public_keys=True,
        bounds={"age": [0, 100]},
        median_candidates=list(range(0, 101)),
    ),
    Workload(
        id="private_keys",
        title="count by occupation (private keys: partition selection)",
        dataset="population",
        sql=(
            "SELECT occupation, COUNT(*) AS n FROM persons "
            "WHERE occupation IS NOT NULL GROUP BY occupation"
        ),
        keys=("occupation",),
        outputs=("n",),
        public_keys=False,
        delta=DELTA,
    ),
    Workload(
        id="join",
        title="insured ⋈ payments on person_id, count + sum(amount) by county",
        dataset="social_insurance",
        sql=(
            "SELECT insured.county_code, COUNT(*) AS n, SUM(payments.amount) AS amount_sum "
            "FROM insured JOIN payments ON insured.person_id = payments.person_id "
            "GROUP BY insured.county_code"
        ),
        keys=("county_code",),
        outputs=("n", "amount_sum"),
        public_keys=True,
        delta=DELTA,
        bounds={"amount": [0, 5000]},
        rows_per_unit=12,
    ),
    Workload(
        id="filter",
        title="filter-heavy: age, sex, employment, income predicates; count + sum by county",
        dataset="population",
        sql=(
            "SELECT county_code, COUNT(*) AS n, SUM(monthly_income) AS income_sum "
            "FROM persons WHERE age BETWEEN 25 AND 60 AND sex = 'F' "
            "AND employment IN ('employed', 'self_employed') AND monthly_income > 3000 "
            "GROUP BY county_code"
        ),
        keys=("county_code",),
        outputs=("n", "income_sum"),
        public_keys=True,
        bounds={"monthly_income": [0, 50000]},
    ),
)


def by_id(workload_id: str) -> Workload:
    for w in WORKLOADS:
        if w.id == workload_id:
            return w
    raise KeyError(workload_id)
