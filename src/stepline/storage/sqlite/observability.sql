-- Observability queries (SQLite). Loaded by ``SqlObservabilityMixin``.

-- name: take_cluster_lease
-- Take the lease when nobody holds it, its holder's time ran out, or we hold it already (then it is extended).
INSERT INTO cluster_leases (name, owner, expires_at) VALUES (:name, :owner, :expires_at)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE cluster_leases.owner = excluded.owner OR cluster_leases.expires_at <= :now
RETURNING owner, expires_at, state

-- name: save_cluster_lease_state
UPDATE cluster_leases SET state = :state WHERE name = :name AND owner = :owner AND expires_at > :now

-- name: release_cluster_lease
UPDATE cluster_leases SET expires_at = 0 WHERE name = :name AND owner = :owner

-- name: backlog_by_function
-- Runs due now that no live lease holds: the due_at <= now range of runs_due (ended runs are not in that index).
SELECT function_id, count(*), min(due_at) FROM runs INDEXED BY runs_due
WHERE due_at IS NOT NULL AND due_at <= :now AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
GROUP BY function_id

-- name: idle_by_reason
-- Live runs with nothing due before a later time (sleeping, waiting, retrying, throttled, ...): the due_at > now range.
SELECT function_id, json_extract(idle_reason, '$.kind'), count(*) FROM runs INDEXED BY runs_due
WHERE due_at > :now AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
GROUP BY 1, 2

-- name: running_by_function
SELECT function_id, count(*) FROM runs INDEXED BY runs_lease_owner
WHERE lease_owner IS NOT NULL AND lease_expires_at > :now
GROUP BY function_id

-- name: run_exists
SELECT 1 FROM runs WHERE id = :run_id

-- name: last_run_span
SELECT coalesce(max(seq), 0) FROM run_spans WHERE run_id = :run_id

-- name: insert_run_spans
INSERT INTO run_spans (run_id, seq, received_at, span)
SELECT :run_id, :after + key + 1, :now, value FROM json_each(:spans)

-- name: list_run_spans
SELECT seq, received_at, span FROM run_spans WHERE run_id = :run_id ORDER BY seq LIMIT :limit

-- name: delete_run_spans_of_runs
DELETE FROM run_spans WHERE run_id IN (SELECT value FROM json_each(:ids))
