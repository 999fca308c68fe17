-- PLACEHOLDER on the refresh branch only: number 0003 belongs to the key-lifecycle branch, and
-- the migration loader refuses gaps. At merge, DELETE THIS FILE and keep that branch's 0003.
SELECT 1;
