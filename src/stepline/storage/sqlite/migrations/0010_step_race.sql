-- The race a step belongs to (parallelMode "race": steps an SDK started together under Promise.race/group.parallel):
-- a key shared by the race's steps. Once one of them has a result, the losing sleeps and waits are resolved, so they
-- no longer hold the run open (server/http_executor.py). NULL for every other step.
ALTER TABLE steps ADD COLUMN race TEXT;
