"""Operators, scenarios and grants (授权).

A grant binds one operator to one scenario (应用场景, its stated purpose) and a set
of datasets, optionally narrowing what each column may be used for, with a
privacy budget and a validity window. Core data and data marked not shared cannot
be granted at all. Read from ``policies/grants.yaml``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sandbox.catalog import Catalog, Use, _first_error, _read_yaml
from sandbox.errors import PolicyInvalid, Refused


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Operator(_Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    name: str


class Scenario(_Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    purpose: str


class Budget(_Model):
    epsilon: float = Field(gt=0)  # total over the grant's life, per dataset
    delta: float = Field(default=0.0, ge=0, lt=1)
    max_epsilon_per_query: float = Field(gt=0)

    @model_validator(mode="after")
    def _check(self) -> Budget:
        if not all(
            math.isfinite(v) for v in (self.epsilon, self.delta, self.max_epsilon_per_query)
        ):
            raise ValueError("budget values must be finite")
        if self.max_epsilon_per_query > self.epsilon:
            raise ValueError("max_epsilon_per_query exceeds the total epsilon")
        return self


class Grant(_Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    operator: str
    scenario: Scenario
    datasets: tuple[str, ...]
    # "dataset.table.column" -> allowed uses (intersected with the catalogue's)
    columns: dict[str, frozenset[Use]] = {}
    budget: Budget
    # analysis jobs (operators' Python scripts, outputs through ACRO, always reviewed;
    # docs/analysis-jobs.md): off unless the bureau grants them
    analysis_jobs: bool = False
    valid_from: datetime
    valid_until: datetime

    @field_validator("valid_from", "valid_until")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        # a date or time without a zone means UTC; naive and aware times do not compare
        return v if v.tzinfo is not None else v.replace(tzinfo=UTC)

    def is_valid_at(self, when: datetime) -> bool:
        return self.valid_from <= when < self.valid_until

    def column_uses(
        self, catalog_uses: frozenset[Use], dataset: str, table: str, column: str
    ) -> frozenset[Use]:
        narrowed = self.columns.get(f"{dataset}.{table}.{column}")
        return catalog_uses if narrowed is None else catalog_uses & narrowed


class Grants(_Model):
    operators: tuple[Operator, ...]
    grants: tuple[Grant, ...]

    def operator(self, operator_id: str) -> Operator | None:
        return next((o for o in self.operators if o.id == operator_id), None)

    def for_operator(self, operator_id: str) -> tuple[Grant, ...]:
        return tuple(g for g in self.grants if g.operator == operator_id)

    def grant(self, grant_id: str) -> Grant | None:
        return next((g for g in self.grants if g.id == grant_id), None)


def load_grants(policies: Path, catalog: Catalog) -> Grants:
    """Load ``policies/grants.yaml`` and check it against the catalogue."""
    path = policies / "grants.yaml"
    try:
        grants = Grants.model_validate(_read_yaml(path))
    except ValidationError as exc:
        raise PolicyInvalid(f"{path.name}: {_first_error(exc)}") from exc
    check_grants(grants, catalog)
    return grants


def check_grants(grants: Grants, catalog: Catalog) -> None:
    """Refuse grants of unknown, core or not-shared data, or for unknown operators."""
    ids = [g.id for g in grants.grants]
    if len(ids) != len(set(ids)):
        raise PolicyInvalid("grants.yaml: duplicate grant ids")
    op_ids = [o.id for o in grants.operators]
    if len(op_ids) != len(set(op_ids)):
        raise PolicyInvalid("grants.yaml: duplicate operator ids")
    for i, a in enumerate(grants.grants):
        for b in grants.grants[i + 1 :]:
            if (
                a.operator == b.operator
                and a.scenario.id == b.scenario.id
                and a.valid_from < b.valid_until
                and b.valid_from < a.valid_until
            ):
                raise PolicyInvalid(
                    f"grants {a.id} and {b.id}: the same operator and scenario with "
                    "overlapping validity windows",
                    hint="Give each operator one grant per scenario at a time.",
                )
    for g in grants.grants:
        if grants.operator(g.operator) is None:
            raise PolicyInvalid(f"grant {g.id}: unknown operator {g.operator!r}")
        if g.valid_until <= g.valid_from:
            raise PolicyInvalid(f"grant {g.id}: valid_until must be after valid_from")
        for ds_id in g.datasets:
            ds = catalog.dataset(ds_id)
            if ds is None:
                raise PolicyInvalid(f"grant {g.id}: unknown dataset {ds_id!r}")
            if not ds.grantable:
                raise PolicyInvalid(
                    f"grant {g.id}: dataset {ds_id!r} is graded {ds.grade.value} with sharing "
                    f"{ds.sharing.attribute.value}; core data and data marked not shared "
                    "cannot be granted",
                    code="GRANT_FORBIDDEN",
                    hint="Remove the dataset from the grant.",
                )
            if g.budget.delta > 0 and not ds.privacy.delta_allowed and not ds.is_public:
                raise PolicyInvalid(
                    f"grant {g.id}: dataset {ds_id!r} allows no delta", code="DELTA_NOT_ALLOWED"
                )
        if g.analysis_jobs and g.columns:
            raise PolicyInvalid(
                f"grant {g.id}: analysis_jobs cannot be granted with column narrowing",
                hint="A script reads whole tables; remove `columns` or `analysis_jobs`.",
            )
        for key in g.columns:
            parts = key.split(".")
            found = catalog.find_table(parts[1]) if len(parts) == 3 else None
            if found is None or found[0].id != parts[0] or found[1].column(parts[2]) is None:
                raise PolicyInvalid(f"grant {g.id}: unknown column {key!r}")
            if parts[0] not in g.datasets:
                raise PolicyInvalid(f"grant {g.id}: column {key!r} is outside the grant")


def find_grant(
    grants: Grants, operator: str, scenario: str, *, now: datetime | None = None
) -> Grant:
    """The operator's grant for a scenario, valid now; else a refusal with a hint."""
    if grants.operator(operator) is None:
        raise Refused(f"Unknown operator {operator!r}.", code="UNKNOWN_OPERATOR")
    matches = [g for g in grants.for_operator(operator) if g.scenario.id == scenario]
    if not matches:
        known = ", ".join(sorted({g.scenario.id for g in grants.for_operator(operator)})) or "none"
        raise Refused(
            f"Operator {operator!r} has no grant for scenario {scenario!r}.",
            code="NO_GRANT",
            hint=f"Scenarios granted to this operator: {known}.",
            http_status=403,
        )
    now = now or datetime.now(UTC)
    valid = [g for g in matches if g.is_valid_at(now)]
    if not valid:
        g = matches[0]
        raise Refused(
            f"The grant {g.id!r} is valid from {g.valid_from.isoformat()} "
            f"until {g.valid_until.isoformat()}.",
            code="GRANT_EXPIRED",
            hint="Ask the bureau to renew the grant.",
            http_status=403,
        )
    return valid[0]
