-- Step attempts and invoked runs, for the run page's timeline (SQLite). Loaded by ``SqlAttemptsMixin``.

-- name: insert_step_attempt
-- A replayed write of the same attempt (a retry re-suspended, a result written again) keeps the first one.
INSERT INTO step_attempts (run_id, step_id, attempt, status, started_at, ended_at, error, retry_at)
VALUES (:run_id, :step_id, :attempt, :status, :started_at, :ended_at, :error, :retry_at)
ON CONFLICT (run_id, step_id, attempt) DO NOTHING

-- name: list_step_attempts
SELECT step_id, attempt, status, started_at, ended_at, error, retry_at FROM step_attempts
WHERE run_id = :run_id ORDER BY step_id, attempt LIMIT :limit

-- name: list_child_runs
SELECT id, parent_step_id FROM runs INDEXED BY runs_parent WHERE parent_run_id = :run_id ORDER BY id LIMIT :limit

-- name: delete_step_attempts_of_runs
DELETE FROM step_attempts WHERE run_id IN (SELECT value FROM json_each(:ids))

-- name: insert_run_wait
INSERT INTO run_waits (run_id, kind, since, until) VALUES (:run_id, :kind, :since, :until)
ON CONFLICT (run_id) DO NOTHING

-- name: get_run_wait
SELECT kind, since, until FROM run_waits WHERE run_id = :run_id

-- name: delete_run_waits_of_runs
DELETE FROM run_waits WHERE run_id IN (SELECT value FROM json_each(:ids))

-- name: list_run_waits
SELECT run_id, kind, since, until FROM run_waits WHERE run_id IN (SELECT value FROM json_each(:ids))

-- name: mark_held_by_pause
-- On resume: the function's runs that have not started and waited for nothing else were held by the pause.
UPDATE runs SET idle_reason = :idle_reason
WHERE status = 'queued' AND function_id = :function_id AND started_at IS NULL AND idle_reason IS NULL
