-- 市辖区（名称以"区"结尾）分家庭类型人口及占比
-- Residents of urban districts (county names ending in 区) by household type.
-- operator: op-jinshu
-- scenario: employment-income
-- try: sandbox explain queries/14_districts_household_types.sql --operator op-jinshu --scenario employment-income --epsilon 1
SELECT
    p.household_type,
    COUNT(*)                              AS residents,
    COUNT(*) FILTER (WHERE p.age >= 65)   AS aged_65_plus
FROM persons p
JOIN divisions d ON p.county_code = d.county_code
WHERE d.county_name LIKE '%区'
GROUP BY p.household_type
ORDER BY residents DESC;
