-- Reads of the dashboard (PostgreSQL). Loaded by ``SqlDashboardMixin``.

-- name: change_marker
-- Changes whenever a transaction anywhere in the cluster takes a transaction id or ends: one cheap call, no table
-- read, so one poller per server notices other nodes' writes.
SELECT pg_current_snapshot()::text

-- name: run_counts
SELECT function_id, status, count(*), count(*) FROM runs WHERE status IN ('queued', 'running')
GROUP BY function_id, status
UNION ALL
SELECT function_id, status, count(*), sum(CASE WHEN ended_at >= %(hour)s THEN 1 ELSE 0 END) FROM runs
WHERE ended_at >= %(day)s GROUP BY function_id, status
