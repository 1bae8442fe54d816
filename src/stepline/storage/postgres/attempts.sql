-- Step attempts and invoked runs, for the run page's timeline (PostgreSQL). Loaded by ``SqlAttemptsMixin``.

-- name: insert_step_attempt
-- A replayed write of the same attempt (a retry re-suspended, a result written again) keeps the first one.
INSERT INTO step_attempts (run_id, step_id, attempt, status, started_at, ended_at, error, retry_at)
VALUES (%(run_id)s, %(step_id)s, %(attempt)s, %(status)s, %(started_at)s, %(ended_at)s, %(error)s::jsonb,
        %(retry_at)s)
ON CONFLICT (run_id, step_id, attempt) DO NOTHING

-- name: list_step_attempts
SELECT step_id, attempt, status, started_at, ended_at, error::text, retry_at FROM step_attempts
WHERE run_id = %(run_id)s ORDER BY step_id, attempt LIMIT %(limit)s

-- name: list_child_runs
SELECT id, parent_step_id FROM runs WHERE parent_run_id = %(run_id)s ORDER BY id LIMIT %(limit)s

-- name: delete_step_attempts_of_runs
DELETE FROM step_attempts WHERE run_id IN (SELECT jsonb_array_elements_text(%(ids)s::jsonb))

-- name: insert_run_wait
INSERT INTO run_waits (run_id, kind, since, until) VALUES (%(run_id)s, %(kind)s, %(since)s, %(until)s)
ON CONFLICT (run_id) DO NOTHING

-- name: get_run_wait
SELECT kind, since, until FROM run_waits WHERE run_id = %(run_id)s

-- name: delete_run_waits_of_runs
DELETE FROM run_waits WHERE run_id IN (SELECT jsonb_array_elements_text(%(ids)s::jsonb))

-- name: list_run_waits
SELECT run_id, kind, since, until FROM run_waits WHERE run_id IN (SELECT jsonb_array_elements_text(%(ids)s::jsonb))

-- name: mark_held_by_pause
-- On resume: the function's runs that have not started and waited for nothing else were held by the pause.
UPDATE runs SET idle_reason = %(idle_reason)s::jsonb
WHERE status = 'queued' AND function_id = %(function_id)s AND started_at IS NULL AND idle_reason IS NULL
