"""The public-data catalogue (公共数据目录): datasets, tables, columns.

Read from ``policies/catalog.yaml`` and validated with pydantic. The catalogue is
schema and policy only, never rows: operators may see all of it. A column's
``uses`` say what an operator may do with it (see docs/queries.md); numeric
``bounds`` make it aggregatable; a ``keys`` name points at a public key set, which
lets a GROUP BY release every key (empty groups included) without partition
selection.
"""

from __future__ import annotations

import csv
import math
import re
from enum import StrEnum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from sandbox.errors import PolicyInvalid


class Grade(StrEnum):
    """分类分级: general data in levels 1–4, important data, core data."""

    GENERAL_1 = "general-1"
    GENERAL_2 = "general-2"
    GENERAL_3 = "general-3"
    GENERAL_4 = "general-4"
    IMPORTANT = "important"
    CORE = "core"


class Sharing(StrEnum):
    """共享属性."""

    UNCONDITIONAL = "unconditional"
    CONDITIONAL = "conditional"
    NOT_SHARED = "not_shared"


class Use(StrEnum):
    IDENTIFIER = "identifier"
    GROUP = "group"
    FILTER = "filter"
    AGGREGATE = "aggregate"


ColumnType = Literal["VARCHAR", "INTEGER", "BIGINT", "DOUBLE", "DATE", "BOOLEAN"]
NUMERIC_TYPES = {"INTEGER", "BIGINT", "DOUBLE"}

# Limits that keep every sensitivity the privacy layer computes a finite number that
# OpenDP's 64-bit integer and float domains take: what passes `policy check` must not
# fail later. A bound is at most MAX_BOUND in size (2**53: beyond it floats skip
# integers); one unit's largest contribution to a sum, rows_per_unit x max(|lo|, |hi|),
# is at most MAX_BOUND too; for an integer column the sum of squares behind VARIANCE
# and STDDEV, rows_per_unit x max(|lo|, |hi|)**2, fits in a signed 64-bit integer.
MAX_BOUND = 2.0**53
MAX_ROWS_PER_UNIT = 1_000_000
MAX_GROUPS_PER_UNIT = 1_000_000
MAX_INTEGER_SQUARES = 2**62
# A private dataset declares how many privacy units it holds at most (``max_units``,
# public, like its schema). The runner checks it (sandbox/datacheck.py) and the privacy
# layer bounds the floating-point rounding of a sum by it: a group's sum adds at most
# rows_per_unit x max_units rows. Undeclared, the bound is 10 million units.
DEFAULT_MAX_UNITS = 10_000_000
MAX_UNITS = 10**10
# a table file: "<dataset dir>/<file>", each part of the names the runner accepts
_FILE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Column(_Model):
    name: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    type: ColumnType
    description: str = ""
    uses: frozenset[Use] = frozenset()
    bounds: tuple[float, float] | None = None
    keys: str | None = None  # name of a public key set
    null_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    # optional hint for synthetic data: {"dist": "normal", "mean": .., "sd": ..} or
    # {"weights": {key: weight}}; never derived from raw data
    synthetic: dict[str, object] | None = None

    @field_validator("bounds")
    @classmethod
    def _finite(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None:
            if not all(math.isfinite(b) for b in v):
                raise ValueError("bounds must be finite numbers")
            if max(abs(b) for b in v) > MAX_BOUND:
                raise ValueError("bounds must lie within ±2**53")
        return v

    @model_validator(mode="after")
    def _check(self) -> Column:
        if self.bounds is not None:
            lo, hi = self.bounds
            if not lo < hi:
                raise ValueError(f"column {self.name}: bounds must have lower < upper")
            if self.type not in NUMERIC_TYPES:
                raise ValueError(f"column {self.name}: bounds need a numeric type")
        if Use.AGGREGATE in self.uses and self.bounds is None and self.type in NUMERIC_TYPES:
            # allowed in the catalogue; the compiler refuses SUM/AVG on it (UNBOUNDED_COLUMN)
            pass
        if Use.IDENTIFIER in self.uses and len(self.uses) > 1:
            raise ValueError(f"column {self.name}: an identifier has no other use")
        return self


class Table(_Model):
    name: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    description: str = ""
    file: str  # Parquet path relative to the data root
    rows_per_unit: int | None = Field(default=None, ge=1, le=MAX_ROWS_PER_UNIT)  # None: lookup
    # a lookup table's unique key: other tables may JOIN it on a column with this
    # column's key set
    lookup_key: str | None = None
    columns: tuple[Column, ...]

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)

    @model_validator(mode="after")
    def _check(self) -> Table:
        names = [c.name for c in self.columns]
        if len(names) != len(set(names)):
            raise ValueError(f"table {self.name}: duplicate column names")
        if ".." in Path(self.file).parts or Path(self.file).is_absolute():
            raise ValueError(f"table {self.name}: file must be relative, without '..'")
        parts = self.file.split("/")
        if len(parts) < 2 or not all(_FILE_PART.match(p) and p not in {".", ".."} for p in parts):
            raise ValueError(
                f"table {self.name}: file must be '<dataset directory>/<file>' with parts "
                "of letters, digits, '_', '-' and '.'"
            )
        rows = self.rows_per_unit or 1
        for c in self.columns:
            if c.bounds is None:
                continue
            reach = max(abs(c.bounds[0]), abs(c.bounds[1]))
            if rows * reach > MAX_BOUND:
                raise ValueError(
                    f"table {self.name}: column {c.name}: rows_per_unit x the largest bound "
                    "exceeds 2**53"
                )
            if c.type in ("INTEGER", "BIGINT") and rows * reach * reach > MAX_INTEGER_SQUARES:
                raise ValueError(
                    f"table {self.name}: column {c.name}: rows_per_unit x the largest bound "
                    "squared exceeds 2**62 (the integer sum of squares would overflow)"
                )
        if self.lookup_key is not None and self.column(self.lookup_key) is None:
            raise ValueError(f"table {self.name}: lookup_key is not a column")
        return self


class SharingPolicy(_Model):
    attribute: Sharing
    reason: str = ""

    @model_validator(mode="after")
    def _check(self) -> SharingPolicy:
        if self.attribute != Sharing.UNCONDITIONAL and not self.reason.strip():
            raise ValueError("conditional and not-shared data need a stated reason")
        return self


class PrivacyPolicy(_Model):
    definition: Literal["pure", "zcdp"] = "pure"
    delta_allowed: bool = True
    max_groups_per_unit: int = Field(default=1, ge=1, le=MAX_GROUPS_PER_UNIT)  # per query
    # at most this many units in any table of the dataset: checked, not trusted
    max_units: int = Field(default=DEFAULT_MAX_UNITS, ge=1, le=MAX_UNITS)


class Dataset(_Model):
    id: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    title: str
    owner: str  # 目录编制单位
    description: str = ""
    version: str
    grade: Grade
    sharing: SharingPolicy
    privacy_unit: str | None = None  # None: a public lookup dataset
    privacy: PrivacyPolicy = PrivacyPolicy()
    tables: tuple[Table, ...]

    @property
    def is_public(self) -> bool:
        return self.privacy_unit is None

    @property
    def grantable(self) -> bool:
        return self.grade != Grade.CORE and self.sharing.attribute != Sharing.NOT_SHARED

    def table(self, name: str) -> Table | None:
        return next((t for t in self.tables if t.name == name), None)

    @model_validator(mode="after")
    def _check(self) -> Dataset:
        for t in self.tables:
            if self.privacy_unit is None:
                if t.rows_per_unit is not None:
                    raise ValueError(f"{self.id}.{t.name}: a lookup table has no rows_per_unit")
                if any(Use.IDENTIFIER in c.uses or Use.AGGREGATE in c.uses for c in t.columns):
                    raise ValueError(f"{self.id}.{t.name}: lookup columns are group/filter only")
                continue
            if t.rows_per_unit is None:
                raise ValueError(f"{self.id}.{t.name}: rows_per_unit is required")
            unit = t.column(self.privacy_unit)
            if unit is None or Use.IDENTIFIER not in unit.uses:
                raise ValueError(
                    f"{self.id}.{t.name}: needs the privacy unit {self.privacy_unit!r} "
                    "as an identifier column"
                )
        return self


class KeySet(_Model):
    """A public list of group keys, inline or in a CSV file beside the catalogue."""

    values: tuple[str | int, ...] = ()
    file: str | None = None  # CSV with a 'value' column (other columns: public labels)


class Catalog(_Model):
    datasets: tuple[Dataset, ...]
    key_sets: dict[str, KeySet] = {}
    # resolved key values (filled by load_catalog from files); not in YAML
    resolved_keys: dict[str, tuple[str | int, ...]] = {}

    def dataset(self, dataset_id: str) -> Dataset | None:
        return next((d for d in self.datasets if d.id == dataset_id), None)

    def find_table(self, table: str) -> tuple[Dataset, Table] | None:
        """Table names are unique across the catalogue."""
        for d in self.datasets:
            t = d.table(table)
            if t is not None:
                return d, t
        return None

    def keys(self, name: str) -> tuple[str | int, ...]:
        return self.resolved_keys[name]

    @model_validator(mode="after")
    def _check(self) -> Catalog:
        ids = [d.id for d in self.datasets]
        if len(ids) != len(set(ids)):
            raise ValueError("duplicate dataset ids")
        tables = [t.name for d in self.datasets for t in d.tables]
        if len(tables) != len(set(tables)):
            raise ValueError("table names must be unique across the catalogue")
        for d in self.datasets:
            for t in d.tables:
                for c in t.columns:
                    if c.keys is not None and c.keys not in self.key_sets:
                        raise ValueError(f"{d.id}.{t.name}.{c.name}: unknown key set {c.keys!r}")
        return self


def load_catalog(policies: Path) -> Catalog:
    """Load and validate ``policies/catalog.yaml``; raise PolicyInvalid with the reason."""
    path = policies / "catalog.yaml"
    raw = _read_yaml(path)
    try:
        catalog = Catalog.model_validate(raw)
    except ValidationError as exc:
        raise PolicyInvalid(
            f"{path.name}: {_first_error(exc)}",
            hint="Fix the policy file and run `sandbox policy check`.",
        ) from exc
    resolved: dict[str, tuple[str | int, ...]] = {}
    for name, ks in catalog.key_sets.items():
        if ks.file is not None:
            key_path = policies / ks.file
            if ".." in Path(ks.file).parts or Path(ks.file).is_absolute():
                raise PolicyInvalid(f"{path.name}: key set {name!r}: file must be relative")
            try:
                with key_path.open(newline="", encoding="utf-8") as fh:
                    resolved[name] = tuple(row["value"] for row in csv.DictReader(fh))
            except (OSError, UnicodeDecodeError, csv.Error) as exc:
                raise PolicyInvalid(
                    f"{path.name}: key set {name!r}: cannot read {ks.file}"
                ) from exc
            except KeyError as exc:
                raise PolicyInvalid(
                    f"{path.name}: key set {name!r}: {ks.file} has no 'value' column"
                ) from exc
        else:
            resolved[name] = ks.values
        if not resolved[name]:
            raise PolicyInvalid(f"{path.name}: key set {name!r} is empty")
    return catalog.model_copy(update={"resolved_keys": resolved})


def _read_yaml(path: Path) -> object:
    try:
        with path.open(encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError as exc:
        raise PolicyInvalid(f"{path} does not exist", hint="Pass --policies DIR.") from exc
    except IsADirectoryError as exc:
        raise PolicyInvalid(f"{path.name} is a directory, not a file") from exc
    except UnicodeDecodeError as exc:
        raise PolicyInvalid(f"{path.name} is not UTF-8 text") from exc
    except OSError as exc:
        raise PolicyInvalid(f"{path.name} cannot be read") from exc
    except yaml.YAMLError as exc:
        raise PolicyInvalid(f"{path.name} is not valid YAML") from exc
    except RecursionError as exc:
        raise PolicyInvalid(f"{path.name} is nested too deeply") from exc


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]
