-- 各县（市、区）户籍人口数 — 劳动力市场年报 表1
-- Registered residents per county, for table 1 of the labour-market report.
-- operator: op-jinshu
-- scenario: employment-income
-- try: sandbox explain queries/01_residents_by_county.sql --operator op-jinshu --scenario employment-income --epsilon 0.5
SELECT
    county_code,
    COUNT(*) AS residents
FROM persons
GROUP BY county_code
ORDER BY county_code;
