"""Presentation helpers: the released table, numbers, times, bars."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sandbox.web import render


def test_released_table_pairs_values_with_their_pm_and_marks_suppression() -> None:
    job = {
        "preview": {
            "columns": ["county", "n", "mean_income", "p50", "suppressed"],
            "rows": [
                {
                    "county": "140105",
                    "n": 120,
                    "mean_income": 4100.5,
                    "p50": 3.5,
                    "suppressed": False,
                },
                {
                    "county": "140106",
                    "n": None,
                    "mean_income": None,
                    "p50": None,
                    "suppressed": True,
                },
            ],
            "total_rows": 2,
        },
        "accuracy": {
            "n": [{"scale": 4.0, "accuracy_95": 12.5, "pm95": 15, "pm95_unit": "value"}, None],
            "mean_income": [
                {"scale": None, "pm95": 5000.0, "pm95_unit": "value", "derived": True},
                None,
            ],
            "p50": [{"scale": 8.0, "rank_error_95": 37, "pm95": 37, "pm95_unit": "rank"}, None],
        },
    }
    table = render.released_table(job)
    assert table is not None
    assert table["columns"] == ["county", "n", "mean_income", "p50"]  # flag shown per row
    assert table["measures"] == ["n", "mean_income", "p50"]
    first, second = table["rows"]
    county, n, mean, p50 = first["cells"]
    assert p50["pm"] == 37 and p50["rank"] is True and p50["wide"] is False  # rank units
    assert county["measure"] is False and county["value"] == "140105"
    assert n["pm"] == 15 and n["rank"] is False and not n["wide"]
    assert "interval" not in n  # never lo/hi around the unrounded value
    assert mean["derived"] is True and mean["pm"] == 5000.0 and mean["wide"] is True  # ± > value
    assert first["suppressed"] is False and second["suppressed"] is True
    assert second["cells"][1]["value"] is None and second["cells"][1]["pm"] is None
    assert render.released_table({"preview": None}) is None


def test_numbers_and_losses() -> None:
    assert render.fmt_num(None) == "—"
    assert render.fmt_num(12345) == "12,345"
    assert render.fmt_num(208881.78) == "208,882"
    assert render.fmt_num(12.25) == "12.2"
    assert render.fmt_num(3.37561) == "3.38"
    assert render.fmt_num(float("nan")) == "—"
    assert render.fmt_num(0.5, 0) == "0"
    assert render.fmt_loss(0) == "0" and render.fmt_loss(1e-5) == "1e-5"
    assert render.fmt_loss(0.004444) == "0.004444" and render.fmt_loss(1.0) == "1"
    assert render.fmt_loss(14.700000001) == "14.7"  # the ledger's decimal, no float noise
    assert render.fmt_loss(0.0044438412) == "0.004444"


def test_noisy_values_round_to_their_interval() -> None:
    assert render.fmt_estimate(4934.305542578124, 120.0) == "4,930"
    assert render.fmt_estimate(4934.305542578124, 0.3) == "4,934.3"
    assert render.fmt_estimate(4934.305542578124) == "4,934"  # no ±: as fmt_num
    assert render.fmt_estimate(120, 2.5) == "120"  # a count keeps no fraction
    assert render.fmt_halfwidth(123.4) == "120" and render.fmt_halfwidth(2.5, 120) == "2"
    assert render.fmt_pct(0.5) == "50%" and render.fmt_pct(0.034) == "3.4%"
    assert render.fmt_pct(0.003) == "0.3%" and render.fmt_pct(None) == "—"


def test_times_and_text() -> None:
    assert render.fmt_when("2026-11-24T16:44:37.665210+00:00") == "2026-11-24 16:44:37 UTC"
    assert render.fmt_when("2026-11-24T16:44:37Z") == "2026-11-24 16:44:37 UTC"
    assert render.fmt_when_short("2026-11-24T16:44:37Z") == "2026-11-24 16:44"
    assert render.fmt_when(None) == "—" and render.fmt_when("garbage") == "garbage"
    assert render.sql_excerpt("-- comment\nSELECT  a,\n  b FROM t") == "SELECT a, b FROM t"
    assert render.sql_excerpt("SELECT " + "x" * 300, 20).endswith("…")
    assert len(render.sql_excerpt("SELECT " + "x" * 300, 20)) == 20


def test_budget_bar_and_expiry() -> None:
    bar = render.budget_bar({"total": 20.0, "spent": 5.0, "reserved": 1.0}, width=200)
    assert bar == {"spent": 50.0, "reserved": 10.0, "width": 200.0, "pct": 30.0}
    over = render.budget_bar({"total": 1.0, "spent": 3.0, "reserved": 1.0}, width=100)
    assert over["spent"] == 100.0 and over["reserved"] == 0.0
    assert render.budget_bar({"total": 0})["pct"] == 0.0
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    assert render.grant_expired({"valid_until": past})
    assert not render.grant_expired({"valid_until": future})
