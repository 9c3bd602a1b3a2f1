-- 各设区市小微企业（从业人数 < 50）数量，仅民营，2015 年以来登记
-- Small firms (fewer than 50 employees) per city, private ownership only,
-- registered since 2015, still active.
-- operator: op-huaxin
-- scenario: sme-credit
-- try: sandbox explain queries/11_small_firms_by_city.sql --operator op-huaxin --scenario sme-credit --epsilon 0.5
SELECT
    d.city_name,
    COUNT(*) AS small_firms
FROM enterprises e
LEFT JOIN divisions d ON e.county_code = d.county_code
WHERE e.employees < 50
  AND e.ownership = 'private'
  AND e.registered_year >= 2015
  AND NOT e.status IN ('revoked', 'cancelled')
GROUP BY d.city_name
ORDER BY small_firms DESC;
