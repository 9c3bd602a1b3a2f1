-- 历年社保缴费总额、缴费人数及人均缴费
-- Total contributions, contributors and contribution per contributor, by year.
-- A person pays up to 12 times a year; the sandbox bounds rows and years per person.
-- operator: op-jinshu
-- scenario: pension-contributions
-- try: sandbox explain queries/07_contributions_by_year.sql --operator op-jinshu --scenario pension-contributions --epsilon 1
SELECT
    year,
    SUM(amount)                                  AS total_amount,
    COUNT(DISTINCT person_id)                    AS contributors,
    SUM(amount) / COUNT(DISTINCT person_id)      AS amount_per_contributor
FROM payments
GROUP BY year
ORDER BY year;
