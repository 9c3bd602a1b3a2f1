-- 2024 年人均年缴费额（按性别、险种）
-- Mean and median 2024 contribution per insured person, by sex and insurance type.
-- Each person's payments are summed first (per-unit pre-aggregation: at most 12 rows
-- per person, so a total lies in [0, 60 000]), then the totals are averaged over persons.
-- operator: op-jinshu
-- scenario: pension-contributions
-- try: sandbox explain queries/14_mean_annual_contribution.sql --operator op-jinshu --scenario pension-contributions --epsilon 1
WITH per_person AS (
    SELECT person_id, SUM(amount) AS annual_total
    FROM payments
    WHERE year = 2024
    GROUP BY person_id
)
SELECT
    i.sex,
    i.insurance_type,
    COUNT(*)                  AS persons,
    AVG(t.annual_total)       AS mean_annual,
    MEDIAN(t.annual_total)    AS median_annual
FROM per_person t
JOIN insured i ON i.person_id = t.person_id
GROUP BY i.sex, i.insurance_type
ORDER BY i.sex, i.insurance_type;
