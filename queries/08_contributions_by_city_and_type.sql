-- 各市分险种 2024 年缴费情况（参保表与缴费表按人关联，再关联区划表）
-- 2024 contributions by city and insurance type: insured JOIN payments on the
-- person, then the public divisions lookup on the county code.
-- operator: op-jinshu
-- scenario: pension-contributions
-- try: sandbox explain queries/08_contributions_by_city_and_type.sql --operator op-jinshu --scenario pension-contributions --epsilon 1
SELECT
    d.city_name,
    i.insurance_type,
    COUNT(*)       AS payments,
    AVG(p.amount)  AS mean_amount
FROM insured AS i
JOIN payments AS p  ON p.person_id = i.person_id
JOIN divisions AS d ON i.county_code = d.county_code
WHERE p.year = 2024
GROUP BY d.city_name, i.insurance_type
ORDER BY d.city_name, i.insurance_type;
