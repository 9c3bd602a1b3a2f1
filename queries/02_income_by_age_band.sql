-- 分年龄段就业人员月收入（均值、中位数）
-- Monthly income of working people by age band: mean and median.
-- operator: op-jinshu
-- scenario: employment-income
-- try: sandbox explain queries/02_income_by_age_band.sql --operator op-jinshu --scenario employment-income --epsilon 1
SELECT
    CASE
        WHEN age < 25 THEN '16-24'
        WHEN age < 45 THEN '25-44'
        WHEN age < 60 THEN '45-59'
        ELSE '60+'
    END                      AS age_band,
    COUNT(*)                 AS workers,
    AVG(monthly_income)      AS mean_income,
    MEDIAN(monthly_income)   AS median_income
FROM persons
WHERE employment IN ('employed', 'self_employed')
  AND age >= 16
GROUP BY age_band
ORDER BY age_band;
