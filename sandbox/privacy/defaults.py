"""The δ a query gets when the operator asks for none: one rule for every path.

``sandbox dev run``, ``sandbox explain`` (local, with ``--operator``, and on the server),
``POST /v1/explain``, ``sandbox submit`` and ``POST /v1/jobs`` all call
``choose_delta``: an explicit δ always wins; without one, ``default_delta`` decides.

The rule (docs/privacy.md, "The default δ"):

- **δ = 0** when the query needs none: public group keys on a pure-ε dataset, or a
  dataset whose policy allows no δ at all;
- otherwise (private group keys, which need partition selection, or a ρ-zCDP dataset,
  whose guarantee is stated with δ > 0) **one tenth of the grant's total δ**, rounded
  down to the ledger's grain of 10⁻¹⁵ (an even number of grains, so zCDP's half for
  partition selection is whole too). Ten such queries always fit the grant's δ: under
  pure ε each spends its δ from the grant's total; under ρ-zCDP each spends half of it
  for selection, from the account's half of the grant's δ.

The default depends on the Plan, the dataset's policy and the grant only: never on
the data, the budget left, or which path asked, so the same query gets the same δ,
the same cost and the same noise everywhere.
"""

from __future__ import annotations

import math
from fractions import Fraction

from sandbox.catalog import Dataset
from sandbox.grants import Grant
from sandbox.plan import Plan

__all__ = ["DEFAULT_DELTA_SHARE", "DELTA_GRAIN", "choose_delta", "default_delta", "needs_delta"]

DEFAULT_DELTA_SHARE = 10  # a query gets 1/10 of the grant's δ: ten fit
# δ per unit in the ledger (sandbox.ledger.DELTA_UNITS; tests/privacy/test_defaults.py
# checks they agree): a cost is rounded up to it, a total down
DELTA_GRAIN = 10**15


def needs_delta(plan: Plan, dataset: Dataset) -> bool:
    """Whether the query's guarantee needs δ > 0: private group keys (partition
    selection) or a ρ-zCDP dataset."""
    return plan.private_keys or dataset.privacy.definition == "zcdp"


def default_delta(plan: Plan, dataset: Dataset, grant: Grant) -> float:
    """δ for a query that asks for none (the module's rule): 0 when it needs none,
    else the grant's δ / 10, rounded down to an even number of 10⁻¹⁵ grains.

    A grant with δ = 0 gives 0, and ``plan_cost`` then refuses a query that needs
    δ with ``DELTA_REQUIRED`` (its hint names the grant's δ)."""
    if not dataset.privacy.delta_allowed or not needs_delta(plan, dataset):
        return 0.0
    total = math.floor(Fraction(grant.budget.delta) * DELTA_GRAIN)  # the ledger's cap
    grains = (total // (2 * DEFAULT_DELTA_SHARE)) * 2
    exact = Fraction(grains, DELTA_GRAIN)
    value = float(exact)
    if Fraction(value) > exact:  # the nearest float may lie above: take the one below
        value = math.nextafter(value, 0.0)
    return value


def choose_delta(asked: float | None, plan: Plan, dataset: Dataset, grant: Grant) -> float:
    """The δ a query is costed with: the operator's, when given (even 0), else
    ``default_delta``. Validation is ``plan_cost``'s."""
    return asked if asked is not None else default_delta(plan, dataset, grant)
