-- 存续企业分行业户数、平均从业人数与注册资本合计
-- Active enterprises by industry section: count, mean employees, total capital.
-- operator: op-huaxin
-- scenario: sme-credit
-- try: sandbox explain queries/10_enterprises_by_industry.sql --operator op-huaxin --scenario sme-credit --epsilon 1
SELECT
    industry,
    COUNT(*)                 AS enterprises,
    AVG(employees)           AS mean_employees,
    SUM(registered_capital)  AS total_capital_10k_yuan
FROM enterprises
WHERE status = 'active'
GROUP BY industry
ORDER BY industry;
