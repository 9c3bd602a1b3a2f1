-- 从业人数最多的职业（职业无公开代码表：需 δ > 0 做分组筛选）
-- The most common occupations. Occupation has no public key list, so its groups
-- are released by partition selection and the query needs δ > 0.
-- operator: op-jinshu
-- scenario: employment-income
-- try: sandbox explain queries/05_top_occupations.sql --operator op-jinshu --scenario employment-income --epsilon 1 --delta 1e-6
SELECT
    occupation,
    COUNT(*)            AS workers,
    AVG(monthly_income) AS mean_income
FROM persons
WHERE occupation IS NOT NULL
GROUP BY occupation
HAVING COUNT(*) >= 50
ORDER BY workers DESC
LIMIT 20;
