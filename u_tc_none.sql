\set lo random(1, 19800)
UPDATE tc_none SET tried = least(tried, 2147483646) + 1, fence = fence + 1, locked_by = 'w', lease_until = now() + interval '30 s', updated_at = now() WHERE id BETWEEN :lo AND :lo + 199;
