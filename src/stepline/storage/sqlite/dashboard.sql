-- Reads of the dashboard (SQLite). Loaded by ``SqlDashboardMixin``.

-- name: change_marker
PRAGMA data_version

-- name: run_counts
-- Live runs of every function, and runs that ended since :day (with how many of those since :hour): the
-- (status, id) index serves the first half, the partial ended_at index the second (named: given the choice, the
-- planner scans the whole (function_id, id) index to skip sorting for the GROUP BY).
SELECT function_id, status, count(*), count(*) FROM runs INDEXED BY runs_status_id
WHERE status IN ('queued', 'running')
GROUP BY function_id, status
UNION ALL
SELECT function_id, status, count(*), sum(CASE WHEN ended_at >= :hour THEN 1 ELSE 0 END) FROM runs
INDEXED BY runs_ended
WHERE ended_at >= :day AND ended_at IS NOT NULL GROUP BY function_id, status
