-- 按月统计户籍登记人数（日期无公开键：按月分组需 δ）
-- Residents registered per month since 2024 (dates have no public key list, so the
-- months are released by partition selection).
-- operator: op-jinshu
-- scenario: employment-income
-- try: sandbox explain queries/13_registrations_by_month.sql --operator op-jinshu --scenario employment-income --epsilon 1 --delta 1e-6
SELECT
    date_trunc('month', registered_on)  AS month,
    COUNT(*)                            AS registrations
FROM persons
WHERE registered_on >= DATE '2024-01-01'
GROUP BY month
ORDER BY month;
