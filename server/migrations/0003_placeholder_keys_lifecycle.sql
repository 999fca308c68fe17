-- Placeholder on the hardening branch only: migrations must be numbered 1..n without gaps, and
-- 0003 (key lifecycle) is written on another branch. Delete this file when merging that one.
SELECT 1;
