-- 分性别劳动年龄人口收入离散程度
-- Spread of monthly income for the working-age population, by sex.
-- operator: op-jinshu
-- scenario: employment-income
-- try: sandbox explain queries/03_income_spread_by_sex.sql --operator op-jinshu --scenario employment-income --epsilon 1
SELECT
    sex,
    AVG(monthly_income)       AS mean_income,
    STDDEV(monthly_income)    AS sd_income,
    VARIANCE(monthly_income)  AS var_income
FROM persons
WHERE age BETWEEN 16 AND 59
  AND monthly_income IS NOT NULL
GROUP BY sex;
