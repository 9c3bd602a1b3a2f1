-- 各市成年人月收入分档人数
-- Adults in each city by monthly-income band. The bands are a public key (their
-- values are the CASE's literals), so every band of every city is released; a person
-- whose income is missing matches no branch and is left out.
-- operator: op-jinshu
-- scenario: employment-income
-- try: sandbox explain queries/15_income_bands_by_city.sql --operator op-jinshu --scenario employment-income --epsilon 1
WITH adults AS (
    SELECT d.city_name, p.monthly_income
    FROM persons p
    JOIN divisions d ON p.county_code = d.county_code
    WHERE p.age >= 18
)
SELECT
    city_name,
    CASE
        WHEN monthly_income < 3000 THEN 'under 3000'
        WHEN monthly_income < 8000 THEN '3000-7999'
        WHEN monthly_income >= 8000 THEN '8000 and over'
    END                 AS income_band,
    COUNT(*)            AS adults
FROM adults
GROUP BY city_name, income_band
ORDER BY city_name, income_band;
