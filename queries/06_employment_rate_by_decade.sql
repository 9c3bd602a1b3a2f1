-- 分十岁年龄组就业率（比值为噪声结果的后处理）
-- Employment rate by ten-year age group; the rate is computed from noisy counts.
-- operator: op-jinshu
-- scenario: employment-income
-- try: sandbox explain queries/06_employment_rate_by_decade.sql --operator op-jinshu --scenario employment-income --epsilon 1
SELECT
    FLOOR(age / 10) * 10                                   AS age_group,
    COUNT(*)                                               AS residents,
    COUNT(*) FILTER (WHERE employment = 'employed')        AS employed,
    ROUND(100.0 * COUNT(*) FILTER (WHERE employment = 'employed') / COUNT(*), 1)
                                                           AS employment_rate_pct
FROM persons
WHERE age BETWEEN 16 AND 69
GROUP BY 1
ORDER BY 1;
