"""The SQL that fabricates each demo table (sandbox/ops/demo_data.py writes it).

Every value is a pure function of (seed, row number, column), computed in DuckDB
from ``hash()``: a uniform number per (seed, row, salt), weighted choices from the
word lists below, log-normal incomes, months of contributions with gaps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sandbox.catalog import Catalog, Dataset, Table

MONTHS = 84  # 2019-01 .. 2025-12

# 5-year age bands 0-4 .. 95-100, weights roughly after the 2020 census of Shanxi.
_AGE_BANDS = [4.5, 5.5, 5.8, 5.3, 5.5, 6.5, 8.5, 7.5, 6.8, 8.0,
              8.5, 7.0, 5.5, 5.5, 3.8, 2.4, 1.5, 0.8, 0.3, 0.1]  # fmt: skip

_SURNAMES = {"王": 7.1, "李": 7.0, "张": 6.8, "刘": 5.4, "陈": 4.5, "杨": 3.1, "赵": 2.3,
             "黄": 2.2, "周": 2.1, "吴": 2.0, "徐": 1.3, "孙": 1.5, "胡": 1.3, "朱": 1.2,
             "高": 1.4, "林": 1.0, "何": 1.0, "郭": 1.8, "马": 1.3, "罗": 0.9, "梁": 0.9,
             "宋": 0.8, "郑": 0.8, "谢": 0.7, "韩": 0.8, "唐": 0.6, "冯": 0.7, "于": 0.6,
             "董": 0.6, "萧": 0.3, "程": 0.6, "曹": 0.6, "袁": 0.5, "邓": 0.5, "许": 0.5,
             "傅": 0.4, "沈": 0.4, "曾": 0.4, "彭": 0.4, "吕": 0.5, "苏": 0.4, "卢": 0.4,
             "蒋": 0.4, "蔡": 0.3, "贾": 0.6, "丁": 0.4, "魏": 0.5, "薛": 0.4, "阎": 0.4,
             "段": 0.3, "雷": 0.3, "侯": 0.4, "武": 0.6, "乔": 0.3, "牛": 0.3,
             "温": 0.3}  # fmt: skip
_GIVEN = list("伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华建国红梅玉兰志强"
              "文辉海燕晓东鹏飞丹宇欣怡浩然子轩梓涵一诺俊杰佳琪思远晨阳雨萱瑞霖")  # fmt: skip

_FIELDS = ["煤矿", "焦化", "电力", "冶金", "机械", "化工", "建筑", "道路运输", "铁路", "物流",
           "软件", "通信", "电子", "电气", "汽车", "农业", "林业", "畜牧", "食品", "纺织",
           "零售", "批发", "餐饮", "酒店", "旅游", "金融", "保险", "会计", "法律", "教育",
           "医疗", "护理", "药品", "环保", "水利", "测绘", "房地产", "物业", "广告", "新闻",
           "文化", "体育", "家政", "安保", "仓储", "快递", "能源", "光伏", "陶瓷",
           "醋业"]  # fmt: skip
_ROLES = ["工人", "技术员", "工程师", "操作工", "销售员", "管理人员", "办事员", "维修工",
          "质检员", "司机", "讲师", "顾问"]  # fmt: skip

_INDUSTRY_WEIGHTS = {"A": 6, "B": 3, "C": 10, "D": 1.5, "E": 9, "F": 30, "G": 4, "H": 5,
                     "I": 5, "J": 1, "K": 2, "L": 7, "M": 4, "N": 1, "O": 3, "P": 1.5,
                     "Q": 1, "R": 2, "S": 3, "T": 0.01}  # fmt: skip
_BRAND = list("晋鑫泰华恒隆盛源宏达通兴瑞丰汾河太行龙城吕梁晟昌")


def _slots(values: Sequence[Any], weights: Sequence[float], n: int = 1000) -> list[Any]:
    """A list of n values in which each value appears in proportion to its weight."""
    total = float(sum(weights))
    exact = [w / total * n for w in weights]
    counts = [int(e) for e in exact]
    order = sorted(range(len(values)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return [v for v, c in zip(values, counts, strict=True) for _ in range(c)]


def _sql_list(values: Sequence[Any]) -> str:
    def lit(v: Any) -> str:
        if isinstance(v, str):
            return "'" + v.replace("'", "''") + "'"
        return repr(v)

    return "[" + ", ".join(lit(v) for v in values) + "]"


def _pick(values: Sequence[Any], weights: Sequence[float], u: str, n: int = 1000) -> str:
    """SQL: a weighted choice among values, driven by the uniform expression u."""
    return f"({_sql_list(_slots(values, weights, n))})[1 + floor(({u}) * {n})::INTEGER]"


class DemoSQL:
    """The SELECT of each demo table, one chunk of units [lo, hi) at a time."""

    def __init__(
        self,
        catalog: Catalog,
        counties: list[dict[str, str]],
        *,
        people: int,
        seed: int,
    ) -> None:
        self.catalog = catalog
        self.counties = counties
        self.people = people
        self.enterprises = max(1, people // 20)
        self.seed = seed

    # -- uniform numbers ------------------------------------------------------
    def u(self, i: str, salt: str) -> str:
        """SQL: a uniform double in [0, 1) from (seed, i, salt).

        The salt becomes a 64-bit constant XORed into the row number before DuckDB's
        integer hash (a full-avalanche mixer), so different salts give independent
        streams. (hash(i, seed, salt) with several arguments combines the argument
        hashes in a way that leaves streams of different salts correlated.)
        """
        c = hash_stable(f"{self.seed}:{salt}")
        return f"((hash(xor(({i})::UBIGINT, {c}::UBIGINT)) >> 11)::DOUBLE / 9007199254740992.0)"

    def normal(self, i: str, salt: str) -> str:
        """SQL: a standard normal (Box–Muller)."""
        u1 = self.u(i, salt + "1")
        u2 = self.u(i, salt + "2")
        return f"(sqrt(-2 * ln(1 - {u1})) * cos(2 * pi() * {u2}))"

    def county_weights(self, enterprise: bool = False) -> list[float]:
        weights = []
        for c in self.counties:
            name, city = c["name"], c["city_code"]
            w = 1.0
            if name.endswith("区"):
                w = 2.5
            elif name.endswith("市"):
                w = 1.6
            if city == "1401" and name.endswith("区"):
                w = 5.5 if not enterprise else 8.0  # Taiyuan's urban districts
            weights.append(w)
        return weights

    # -- the person register (a pure function of the row number p) -----------
    def persons_sql(self, lo: int, hi: int) -> str:
        u = self.u
        codes = [c["value"] for c in self.counties]
        band = _pick(list(range(len(_AGE_BANDS))), _AGE_BANDS, u("p", "band"))
        under16 = (sum(_AGE_BANDS[:3]) + _AGE_BANDS[3] / 5) / sum(_AGE_BANDS)
        occ_null_adult = max(0.0, (0.3 - under16) / (1 - under16))
        titles = [f + r for f in _FIELDS for r in _ROLES]
        # shuffle the titles deterministically so the long tail mixes fields and roles
        titles = sorted(titles, key=lambda s: hash_stable(s))
        n_titles = len(titles)
        surname = _pick(list(_SURNAMES), list(_SURNAMES.values()), u("p", "sn"))
        given = _sql_list(_GIVEN)
        ng = len(_GIVEN)
        emp = u("p", "emp")
        household = _pick(
            ["single", "couple", "family_with_children", "extended", "collective"],
            [17, 28, 38, 14, 3],
            u("p", "hh"),
        )
        occupation = (
            f"({_sql_list(titles)})[1 + floor(pow({u('p', 'occ')}, 3) * {n_titles})::INTEGER]"
        )
        income_mu_sd = """CASE employment
                WHEN 'employed' THEN [8.45, 0.45]
                WHEN 'self_employed' THEN [8.3, 0.8]
                WHEN 'retired' THEN [8.1, 0.35]
                WHEN 'unemployed' THEN [6.6, 0.9]
                WHEN 'student' THEN [6.0, 0.8]
                ELSE [7.0, 1.0] END"""
        return f"""
        WITH base AS (
            SELECT p,
                   least(100, {band} * 5 + floor({u("p", "age")} * 5)::INTEGER) AS age,
                   {_pick(codes, self.county_weights(), u("p", "county"), 10000)} AS county_code,
                   CASE WHEN {u("p", "sex")} < 0.508 THEN 'M' ELSE 'F' END AS sex
            FROM range({lo}, {hi}) r(p)
        ), emp AS (
            SELECT *,
                CASE
                    WHEN age < 6 THEN 'other'
                    WHEN age < 16 THEN 'student'
                    WHEN age < 23 THEN CASE WHEN {emp} < 0.62 THEN 'student'
                        WHEN {emp} < 0.84 THEN 'employed'
                        WHEN {emp} < 0.94 THEN 'unemployed' ELSE 'other' END
                    WHEN age < 60 THEN CASE WHEN {emp} < 0.66 THEN 'employed'
                        WHEN {emp} < 0.80 THEN 'self_employed'
                        WHEN {emp} < 0.88 THEN 'unemployed'
                        WHEN {emp} < 0.90 THEN 'student'
                        WHEN {emp} < 0.94 AND age >= 50 THEN 'retired'
                        ELSE 'other' END
                    ELSE CASE WHEN {emp} < 0.80 THEN 'retired'
                        WHEN {emp} < 0.88 THEN 'self_employed'
                        WHEN {emp} < 0.93 THEN 'employed' ELSE 'other' END
                END AS employment
            FROM base
        ), full_rows AS (
            SELECT *,
                (DATE '2026-01-01' - INTERVAL (age * 365 + floor({u("p", "bd")} * 365)::INTEGER) DAY
                )::DATE AS birth,
                {income_mu_sd} AS mu_sd
            FROM emp
        )
        SELECT
            'P' || lpad(p::VARCHAR, 10, '0') AS person_id,
            {surname} || ({given})[1 + floor({u("p", "g1")} * {ng})::INTEGER]
                || CASE WHEN {u("p", "g2n")} < 0.7
                        THEN ({given})[1 + floor({u("p", "g2")} * {ng})::INTEGER] ELSE '' END
                AS name,
            county_code || strftime(birth, '%Y%m%d')
                || lpad((floor({u("p", "seq")} * 500)::INTEGER * 2
                         + CASE WHEN sex = 'M' THEN 1 ELSE 0 END)::VARCHAR, 3, '0')
                || ('0123456789X')[1 + floor({u("p", "chk")} * 11)::INTEGER] AS id_number,
            county_code,
            sex,
            age,
            CASE WHEN age < 18 THEN 'family_with_children'
                 ELSE {household} END AS household_type,
            employment,
            CASE WHEN age < 16 OR {u("p", "occn")} < {occ_null_adult:.6f} THEN NULL
                 ELSE {occupation}
            END AS occupation,
            CASE WHEN {u("p", "incn")} < 0.05 THEN NULL
                 WHEN age < 16 THEN 0.0
                 WHEN employment IN ('student', 'unemployed', 'other')
                      AND {u("p", "inc0")} < 0.45 THEN 0.0
                 ELSE round(least(50000.0,
                        exp(mu_sd[1] + mu_sd[2] * {self.normal("p", "inc")})), 2)
            END AS monthly_income,
            greatest(birth, DATE '1985-01-01')
                + floor({u("p", "reg")}
                    * (DATE '2025-12-31' - greatest(birth, DATE '1985-01-01')))::INTEGER
                AS registered_on,
            -- not written: used by the social-insurance tables
            CASE employment
                WHEN 'employed' THEN 0.96 WHEN 'self_employed' THEN 0.82
                WHEN 'retired' THEN 0.9 WHEN 'unemployed' THEN 0.5
                WHEN 'student' THEN 0.15 ELSE 0.4 END AS p_insured,
            p
        FROM full_rows
        """

    def insured_sql(self, lo: int, hi: int) -> str:
        u = self.u
        return f"""
        SELECT person_id, county_code, sex, age,
            CASE
                WHEN employment = 'employed' THEN
                    CASE WHEN {u("p", "it")} < 0.8 THEN 'enterprise_employee'
                         ELSE 'public_sector' END
                WHEN employment = 'self_employed' THEN
                    CASE WHEN {u("p", "it")} < 0.4 THEN 'enterprise_employee'
                         ELSE 'urban_rural_resident' END
                WHEN employment = 'retired' THEN
                    CASE WHEN {u("p", "it")} < 0.5 THEN 'enterprise_employee'
                         WHEN {u("p", "it")} < 0.65 THEN 'public_sector'
                         ELSE 'urban_rural_resident' END
                ELSE 'urban_rural_resident'
            END AS insurance_type,
            p
        FROM ({self.persons_sql(lo, hi)})
        WHERE age >= 16 AND {u("p", "ins")} < p_insured
        """

    def payments_sql(self, lo: int, hi: int) -> str:
        u = self.u
        pm = "(p * 128 + m)"
        payer = f"""CASE insurance_type
            WHEN 'enterprise_employee' THEN
                CASE WHEN {u(pm, "pay")} < 0.9 THEN 'employer' ELSE 'individual' END
            WHEN 'public_sector' THEN
                CASE WHEN {u(pm, "pay")} < 0.6 THEN 'government' ELSE 'employer' END
            ELSE CASE WHEN {u(pm, "pay")} < 0.85 THEN 'individual' ELSE 'government' END
        END"""
        return f"""
        WITH ins AS (
            SELECT person_id, insurance_type, p,
                CASE WHEN {u("p", "s0")} < 0.3 THEN 0
                     ELSE floor({u("p", "s")} * {MONTHS})::INTEGER END AS first_m,
                1 + floor(pow({u("p", "len")}, 0.8) * {MONTHS})::INTEGER AS span,
                CASE insurance_type
                    WHEN 'enterprise_employee' THEN 6.6
                    WHEN 'public_sector' THEN 7.0
                    ELSE 4.6 END + 0.45 * {self.normal("p", "base")} AS log_base
            FROM ({self.insured_sql(lo, hi)})
        )
        SELECT person_id,
            2019 + m // 12 AS year,
            1 + m % 12 AS month,
            round(least(5000.0, greatest(0.0,
                exp(log_base) * pow(1.045, m / 12.0) * (0.95 + 0.1 * {u(pm, "amt")}))), 2)
                AS amount,
            {payer} AS payer_type
        FROM (
            SELECT person_id, insurance_type, p, log_base,
                CASE WHEN {u("p", "gaps")} < 0.5 THEN 0.0 ELSE 0.12 END AS gap_rate,
                unnest(range(first_m, least(first_m + span, {MONTHS}))) AS m
            FROM ins
        )
        WHERE {u(pm, "gap")} >= gap_rate
        """

    def enterprises_sql(self, lo: int, hi: int) -> str:
        u = self.u
        codes = [c["value"] for c in self.counties]
        industries = list(_INDUSTRY_WEIGHTS)
        county = _pick(codes, self.county_weights(enterprise=True), u("e", "county"), 10000)
        suffix = {
            "A": "农业", "B": "矿业", "C": "制造", "D": "能源", "E": "建筑", "F": "商贸",
            "G": "物流", "H": "餐饮", "I": "信息技术", "J": "投资", "K": "置业", "L": "商务服务",
            "M": "科技", "N": "环境工程", "O": "家政服务", "P": "教育咨询", "Q": "健康管理",
            "R": "文化传媒", "S": "社会服务", "T": "国际组织服务",
        }  # fmt: skip
        suffix_case = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in suffix.items())
        brand = _sql_list(_BRAND)
        nb = len(_BRAND)
        alnum = "0123456789ABCDEFGHJKLMNPQRTUWXY"
        ownership = _pick(
            ["state", "collective", "private", "foreign", "hongkong_macao_taiwan", "other"],
            [4, 2, 85, 1, 1, 7],
            u("e", "own"),
        )
        char = f"('{alnum}')[1 + floor({u('e * 16 + x', 'cc')} * {len(alnum)})::INTEGER]"
        return f"""
        WITH base AS (
            SELECT e,
                {county} AS county_code,
                {_pick(industries, list(_INDUSTRY_WEIGHTS.values()), u("e", "ind"))} AS industry,
                {ownership} AS ownership,
                1980 + floor(pow({u("e", "yr")}, 0.45) * 47)::INTEGER AS registered_year,
                {self.normal("e", "emp")} AS z
            FROM range({lo}, {hi}) r(e)
        )
        SELECT
            'E' || lpad(e::VARCHAR, 9, '0') AS enterprise_id,
            '91' || county_code
                || array_to_string(list_transform(range(10), lambda x: {char}), '')
                AS credit_code,
            ({brand})[1 + floor({u("e", "b1")} * {nb})::INTEGER]
                || ({brand})[1 + floor({u("e", "b2")} * {nb})::INTEGER]
                || CASE industry {suffix_case} ELSE '' END
                || CASE WHEN ownership = 'private' THEN '有限公司' ELSE '有限责任公司' END AS name,
            county_code, industry, ownership,
            CASE WHEN {u("e", "st")} < 0.12 + 0.25 * (2026 - registered_year) / 46.0
                 THEN CASE WHEN {u("e", "st2")} < 0.4 THEN 'revoked' ELSE 'cancelled' END
                 ELSE 'active' END AS status,
            registered_year,
            least(2000, floor(exp(1.6 + 1.3 * z)))::INTEGER AS employees,
            round(least(100000.0, exp(4.0 + 1.1 * z + 0.9 * {self.normal("e", "cap")})), 2)
                AS registered_capital
        FROM base
        """

    def divisions_sql(self) -> str:
        fields = ("value", "name", "city_code", "city_name")
        rows = ", ".join(
            "(" + ", ".join(_sql_list([c[k]])[1:-1] for k in fields) + ")" for c in self.counties
        )
        return (
            "SELECT * FROM (VALUES " + rows + ") t(county_code, county_name, city_code, city_name)"
        )

    # -- dispatch -------------------------------------------------------------
    def builder(self, ds: Dataset, t: Table) -> tuple[Callable[[int, int], str], int] | None:
        """(sql for a chunk of units [lo, hi), number of units), or None if unknown."""
        table = {
            ("population", "persons"): (self.persons_sql, self.people),
            ("social_insurance", "insured"): (self.insured_sql, self.people),
            ("social_insurance", "payments"): (self.payments_sql, self.people),
            ("enterprises", "enterprises"): (self.enterprises_sql, self.enterprises),
            ("divisions", "divisions"): (lambda lo, hi: self.divisions_sql(), 1),
        }
        return table.get((ds.id, t.name))


def hash_stable(text: str) -> int:
    """A process-independent hash (Python's hash() of str is salted per process)."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
