-- Observability queries (PostgreSQL). Loaded by ``SqlObservabilityMixin``.

-- name: take_cluster_lease
-- Take the lease when nobody holds it, its holder's time ran out, or we hold it already (then it is extended). Two
-- nodes racing: the second waits for the first's row lock, then finds the lease held and gets no row.
INSERT INTO cluster_leases (name, owner, expires_at) VALUES (%(name)s, %(owner)s, %(expires_at)s)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE cluster_leases.owner = excluded.owner OR cluster_leases.expires_at <= %(now)s
RETURNING owner, expires_at, state

-- name: save_cluster_lease_state
UPDATE cluster_leases SET state = %(state)s WHERE name = %(name)s AND owner = %(owner)s AND expires_at > %(now)s

-- name: release_cluster_lease
UPDATE cluster_leases SET expires_at = 0 WHERE name = %(name)s AND owner = %(owner)s

-- name: backlog_by_function
-- Runs due now that no live lease holds: the due_at <= now range of runs_due (ended runs are not in that index).
SELECT function_id, count(*), min(due_at) FROM runs
WHERE due_at IS NOT NULL AND due_at <= %(now)s AND (lease_expires_at IS NULL OR lease_expires_at <= %(now)s)
GROUP BY function_id

-- name: idle_by_reason
-- Live runs with nothing due before a later time (sleeping, waiting, retrying, throttled, ...): the due_at > now range.
SELECT function_id, idle_reason->>'kind', count(*) FROM runs
WHERE due_at > %(now)s AND (lease_expires_at IS NULL OR lease_expires_at <= %(now)s)
GROUP BY 1, 2

-- name: running_by_function
SELECT function_id, count(*) FROM runs
WHERE lease_owner IS NOT NULL AND lease_expires_at > %(now)s
GROUP BY function_id

-- name: run_exists
SELECT 1 FROM runs WHERE id = %(run_id)s

-- name: last_run_span
SELECT coalesce(max(seq), 0) FROM run_spans WHERE run_id = %(run_id)s

-- name: insert_run_spans
INSERT INTO run_spans (run_id, seq, received_at, span)
SELECT %(run_id)s, %(after)s + ord, %(now)s, value
FROM jsonb_array_elements_text(%(spans)s::jsonb) WITH ORDINALITY AS s(value, ord)

-- name: list_run_spans
SELECT seq, received_at, span FROM run_spans WHERE run_id = %(run_id)s ORDER BY seq LIMIT %(limit)s

-- name: delete_run_spans_of_runs
DELETE FROM run_spans WHERE run_id IN (SELECT jsonb_array_elements_text(%(ids)s::jsonb))
