-- 历年新登记企业数及平均规模（登记年份取目录边界 1980–2026 为公开键）
-- New enterprise registrations per year and their mean size; registration years
-- come from the catalogue bounds (1980–2026), so every year is released.
-- operator: op-huaxin
-- scenario: sme-credit
-- try: sandbox explain queries/12_new_registrations_by_year.sql --operator op-huaxin --scenario sme-credit --epsilon 1
SELECT
    registered_year,
    COUNT(*)        AS registrations,
    AVG(employees)  AS mean_employees
FROM enterprises
WHERE registered_year BETWEEN 2010 AND 2025
GROUP BY registered_year
ORDER BY registered_year;
