-- 2024 年各月个人缴费额中位数及分布
-- Median and upper decile of individual payments by month, 2024, individual payers.
-- operator: op-jinshu
-- scenario: pension-contributions
-- try: sandbox explain queries/09_monthly_contributions_2024.sql --operator op-jinshu --scenario pension-contributions --epsilon 1
SELECT
    month,
    COUNT(*)                      AS payments,
    MEDIAN(amount)                AS median_amount,
    QUANTILE_CONT(amount, 0.9)    AS p90_amount
FROM payments
WHERE year = 2024
  AND payer_type = 'individual'
GROUP BY month
ORDER BY month;
