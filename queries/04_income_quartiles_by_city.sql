-- 各设区市月收入四分位数（关联行政区划代码表）
-- Income quartiles per prefecture-level city (joins the public divisions lookup).
-- operator: op-jinshu
-- scenario: employment-income
-- try: sandbox explain queries/04_income_quartiles_by_city.sql --operator op-jinshu --scenario employment-income --epsilon 1.5
SELECT
    d.city_name,
    QUANTILE_CONT(p.monthly_income, 0.25)  AS p25_income,
    MEDIAN(p.monthly_income)               AS p50_income,
    QUANTILE_CONT(p.monthly_income, 0.75)  AS p75_income
FROM persons AS p
JOIN divisions AS d ON p.county_code = d.county_code
WHERE p.employment = 'employed'
GROUP BY d.city_name
ORDER BY d.city_name;
