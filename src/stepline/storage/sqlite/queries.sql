-- Stepline SQLite queries. Parameters are named (:name). Times are unix milliseconds.

-- name: insert_event
INSERT INTO events (internal_id, id, name, data, user, ts, v, received_at, traceparent)
VALUES (:internal_id, :id, :name, :data, :user, :ts, :v, :received_at, :traceparent)
ON CONFLICT (internal_id) DO NOTHING

-- name: event_cursor
SELECT coalesce(max(seq), 0) FROM events

-- name: select_events_by_ids
SELECT internal_id, id, name, data, user, ts, v, received_at, traceparent FROM events
WHERE internal_id IN (SELECT value FROM json_each(:ids))

-- name: select_event
SELECT internal_id, id, name, data, user, ts, v, received_at, traceparent FROM events WHERE internal_id = :internal_id

-- name: list_events
-- A page stops before the event that would take its data past :max_bytes (it holds at least one event).
SELECT internal_id, id, name, data, user, ts, v, received_at FROM (
    SELECT internal_id, id, name, data, user, ts, v, received_at, seq,
           sum(length(data)) OVER (ORDER BY seq DESC ROWS UNBOUNDED PRECEDING) - length(data) AS bytes_before
    FROM events
    WHERE (:name IS NULL OR name = :name)
      AND seq < CASE WHEN :before IS NULL THEN 9223372036854775807
                    ELSE (SELECT seq FROM events WHERE internal_id = :before) END
    ORDER BY seq DESC LIMIT :limit
) WHERE bytes_before < :max_bytes ORDER BY seq DESC

-- name: events_after_cursor
SELECT internal_id, id, name, data, user, ts, v, received_at FROM events
WHERE name = :name AND seq > :since ORDER BY seq

-- name: upsert_function
INSERT INTO functions (id, app_id, slug, name, config, updated_at)
VALUES (:id, :app_id, :slug, :name, :config, :now)
ON CONFLICT (id) DO UPDATE SET name = excluded.name, config = excluded.config, updated_at = excluded.updated_at
WHERE functions.config IS NOT excluded.config OR functions.name IS NOT excluded.name

-- name: delete_app_functions_except
DELETE FROM functions WHERE app_id = :app_id AND id NOT IN (SELECT value FROM json_each(:keep))

-- name: bump_registry_version
UPDATE registry_version SET version = version + 1 RETURNING version

-- name: registry_version
SELECT version FROM registry_version

-- name: list_functions
SELECT id, app_id, slug, name, config FROM functions ORDER BY id

-- name: claim_idempotency_key
INSERT INTO idempotency (function_id, key, run_id, expires_at)
VALUES (:function_id, :key, :run_id, :expires_at)
ON CONFLICT (function_id, key) DO UPDATE SET
    run_id = CASE WHEN idempotency.expires_at <= :now THEN excluded.run_id ELSE idempotency.run_id END,
    expires_at = CASE WHEN idempotency.expires_at <= :now THEN excluded.expires_at ELSE idempotency.expires_at END
RETURNING run_id

-- name: insert_run
INSERT INTO runs (id, function_id, event_id, batch, status, created_at, start_deadline, due_at,
                  parent_run_id, parent_step_id, idle_reason, flow, ckey1, ckey2, priority_ms, singleton_key,
                  ended_at)
VALUES (:id, :function_id, :event_id, :batch, :status, :created_at, :start_deadline, :due_at,
        :parent_run_id, :parent_step_id, :idle_reason, :flow, :ckey1, :ckey2, :priority_ms,
        :singleton_key, :ended_at)
ON CONFLICT (id) DO NOTHING

-- name: lease_endpoint_run
-- A durable endpoint's run, inserted queued: the app runs it, so it starts running under the app's lease.
UPDATE runs SET status = 'running', started_at = :now, lease_owner = :owner, lease_expires_at = :lease_until
WHERE id = :run_id AND status = 'queued'

-- name: insert_wait
INSERT INTO waits (run_id, step_id, kind, event_name, expression, expires_at)
VALUES (:run_id, :step_id, :kind, :event_name, :expression, :expires_at)

-- name: waits_for_event
SELECT w.id, w.run_id, w.step_id, w.kind, w.expression,
       e.internal_id, e.id, e.name, e.data, e.user, e.ts, e.v, e.received_at
FROM waits w
JOIN runs r ON r.id = w.run_id
JOIN events e ON e.internal_id = r.event_id
WHERE w.event_name = :event_name AND w.expires_at > :now AND r.status IN ('queued', 'running')
ORDER BY w.id

-- name: delete_wait
DELETE FROM waits WHERE id = :id

-- name: signal_wait
-- The live wait for a signal (at most one: registering a second one conflicts or replaces it).
SELECT w.id, w.run_id, w.step_id
FROM waits w JOIN runs r ON r.id = w.run_id
WHERE w.event_name = :name AND w.kind = 'signal' AND w.expires_at > :now AND r.status IN ('queued', 'running')
ORDER BY w.id
LIMIT 1

-- name: delete_run_waits
DELETE FROM waits WHERE run_id = :run_id

-- name: delete_step_wait
DELETE FROM waits WHERE run_id = :run_id AND step_id = :step_id

-- name: claim_runs
-- A queued run past its timeouts.start is leased but not started: it stays queued (its worker cancels it).
UPDATE runs
SET status = CASE WHEN status = 'queued' AND (start_deadline IS NULL OR start_deadline >= :now) THEN 'running' ELSE status END,
    started_at = CASE WHEN status = 'queued' AND start_deadline < :now THEN NULL ELSE coalesce(started_at, :now) END,
    lease_owner = :owner,
    lease_expires_at = :lease_until
WHERE id IN (
    SELECT id FROM runs
    WHERE due_at IS NOT NULL AND due_at <= :now
      AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
      AND +function_id IN (SELECT value FROM json_each(:function_ids))  -- "+": search by due_at, not function
    ORDER BY due_at
    LIMIT :limit
)
RETURNING id, function_id, event_id, status, attempt, idle_reason, output, error, created_at, started_at,
          ended_at, start_deadline, due_at, lease_owner, lease_expires_at, parent_run_id, parent_step_id, batch

-- name: renew_leases
UPDATE runs SET lease_expires_at = :lease_until
WHERE lease_owner = :owner AND id IN (SELECT value FROM json_each(:ids))

-- name: leases_not_held
SELECT value FROM json_each(:ids)
WHERE value NOT IN (SELECT id FROM runs WHERE lease_owner = :owner AND id IN (SELECT value FROM json_each(:ids)))

-- name: release_run
UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL, due_at = :due_at
WHERE id = :run_id AND lease_owner = :owner AND status IN ('queued', 'running')
RETURNING ckey1, ckey2

-- name: run_lease
SELECT status, lease_owner FROM runs WHERE id = :run_id

-- name: select_steps_for_runs
SELECT run_id, step_id, display_id, kind, status, attempts, output, error, wake_at, started_at, ended_at, race
FROM steps WHERE run_id IN (SELECT value FROM json_each(:ids)) ORDER BY run_id, seq

-- name: select_step
SELECT run_id, step_id, display_id, kind, status, attempts, output, error, wake_at, started_at, ended_at, race
FROM steps WHERE run_id = :run_id AND step_id = :step_id

-- name: upsert_step
INSERT INTO steps (run_id, step_id, display_id, kind, status, attempts, output, error, wake_at, started_at,
                   ended_at, seq, race)
VALUES (:run_id, :step_id, :display_id, :kind, :status, :attempts, :output, :error, :wake_at, :started,
        :ended_at, (SELECT coalesce(max(seq), 0) + 1 FROM steps WHERE run_id = :run_id), :race)
ON CONFLICT (run_id, step_id) DO UPDATE SET
    status = excluded.status, attempts = excluded.attempts, output = excluded.output,
    error = coalesce(excluded.error, steps.error),  -- a step that succeeds on a retry keeps its last error
    wake_at = excluded.wake_at, ended_at = excluded.ended_at, race = coalesce(excluded.race, steps.race)
WHERE steps.status NOT IN ('completed', 'failed')
RETURNING run_id, step_id, display_id, kind, status, attempts, output, error, wake_at, started_at, ended_at, race

-- name: complete_pending_step
UPDATE steps SET status = :status, output = :output, error = :error, wake_at = NULL, ended_at = :now
WHERE run_id = :run_id AND step_id = :step_id AND status NOT IN ('completed', 'failed')

-- name: suspend_run
UPDATE runs SET due_at = :due_at, idle_reason = :idle_reason, lease_owner = NULL, lease_expires_at = NULL,
                attempt = coalesce(:attempt, attempt)
WHERE id = :run_id
RETURNING ckey1, ckey2

-- name: wake_run
UPDATE runs SET due_at = :now, idle_reason = NULL
WHERE id = :run_id AND status IN ('queued', 'running') AND (due_at IS NULL OR due_at > :now)

-- name: retry_run
UPDATE runs SET attempt = coalesce(:attempt, attempt + 1), due_at = :due_at, error = :error,
                idle_reason = :idle_reason,
                lease_owner = NULL, lease_expires_at = NULL
WHERE id = :run_id
RETURNING ckey1, ckey2

-- name: finish_run
UPDATE runs SET status = :status, output = :output, error = :error, ended_at = :now, due_at = NULL,
                idle_reason = NULL, lease_owner = NULL, lease_expires_at = NULL
WHERE id = :run_id AND status IN ('queued', 'running') AND (:owner IS NULL OR lease_owner = :owner)
RETURNING parent_run_id, parent_step_id, started_at, function_id, ckey1, ckey2

-- name: select_run
SELECT id, function_id, event_id, status, attempt, idle_reason, output, error, created_at, started_at,
       ended_at, start_deadline, due_at, lease_owner, lease_expires_at, parent_run_id, parent_step_id, batch
FROM runs WHERE id = :run_id

-- name: list_runs
SELECT id, function_id, event_id, status, attempt, idle_reason, output, error, created_at, started_at,
       ended_at, start_deadline, due_at, lease_owner, lease_expires_at, parent_run_id, parent_step_id, batch
FROM runs
WHERE (:status IS NULL OR status = :status)
  AND (:function_id IS NULL OR function_id = :function_id)
  AND (:event_id IS NULL OR event_id = :event_id)
  AND id < coalesce(:before_id, char(1114111))  -- an index range (an OR would make the page scan from the top)
  AND (:created_after IS NULL OR created_at >= :created_after)
  AND (:created_before IS NULL OR created_at < :created_before)
  AND (:app_id IS NULL
       OR function_id IN (SELECT id FROM functions WHERE app_id = :app_id)
       OR (substr(function_id, 1, length(:app_id) + 1) = :app_id || '-'
           AND function_id NOT IN (SELECT id FROM functions WHERE app_id <> :app_id)))
ORDER BY id DESC
LIMIT :limit

-- name: list_steps
SELECT run_id, step_id, display_id, kind, status, attempts, output, error, wake_at, started_at, ended_at, race
FROM steps WHERE run_id = :run_id ORDER BY seq

-- name: next_due_at
-- The earliest of: the first due time of a run nobody holds (read in due_at order: it stops at the first row, however
-- many runs wait for later), and the first lease expiry of a held run (few: as many as execute now).
SELECT min(t) FROM (
    SELECT * FROM (SELECT due_at AS t FROM runs
                   WHERE due_at IS NOT NULL AND (lease_expires_at IS NULL OR lease_expires_at <= due_at)
                     AND +function_id IN (SELECT value FROM json_each(:function_ids))
                   ORDER BY due_at LIMIT 1)
    UNION ALL
    SELECT lease_expires_at FROM runs  -- "+": through the partial lease_owner index, not every due run
    WHERE lease_owner IS NOT NULL AND +due_at IS NOT NULL AND lease_expires_at > +due_at
      AND +function_id IN (SELECT value FROM json_each(:function_ids))
)

-- name: prunable_runs_of_function
SELECT id FROM runs
WHERE ended_at IS NOT NULL AND ended_at < :cutoff AND function_id = :function_id
LIMIT :limit

-- name: prunable_runs_except
SELECT id FROM runs
WHERE ended_at IS NOT NULL AND ended_at < :cutoff
  AND function_id NOT IN (SELECT value FROM json_each(:except_ids))
LIMIT :limit

-- name: delete_steps_of_runs
DELETE FROM steps WHERE run_id IN (SELECT value FROM json_each(:ids))

-- name: delete_runs
DELETE FROM runs WHERE id IN (SELECT value FROM json_each(:ids))

-- name: delete_unreferenced_events
DELETE FROM events WHERE seq IN (
    SELECT e.seq FROM events e
    WHERE e.received_at < :cutoff
      AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.event_id = e.internal_id)
    LIMIT :limit
)

-- name: delete_expired_idempotency
DELETE FROM idempotency WHERE (function_id, key) IN (
    SELECT function_id, key FROM idempotency WHERE expires_at < :now LIMIT :limit
)

-- name: delete_run_waits_of_runs
DELETE FROM waits WHERE run_id IN (SELECT value FROM json_each(:ids))

-- ----- REST API and dashboard: run and event lists driven by the most selective index -----

-- name: list_events_by_name
SELECT internal_id, id, name, data, user, ts, v, received_at FROM (
    SELECT internal_id, id, name, data, user, ts, v, received_at, seq,
           sum(length(data)) OVER (ORDER BY seq DESC ROWS UNBOUNDED PRECEDING) - length(data) AS bytes_before
    FROM events
    WHERE name = :name
      AND seq < CASE WHEN :before IS NULL THEN 9223372036854775807
                    ELSE (SELECT seq FROM events WHERE internal_id = :before) END
    ORDER BY seq DESC LIMIT :limit
) WHERE bytes_before < :max_bytes ORDER BY seq DESC

-- name: list_runs_by_event
SELECT id, function_id, event_id, status, attempt, idle_reason, output, error, created_at, started_at,
       ended_at, start_deadline, due_at, lease_owner, lease_expires_at, parent_run_id, parent_step_id, batch
FROM runs
WHERE event_id = :event_id
  AND (:status IS NULL OR status = :status)
  AND (:function_id IS NULL OR function_id = :function_id)
  AND id < coalesce(:before_id, char(1114111))  -- an index range (an OR would make the page scan from the top)
  AND (:created_after IS NULL OR created_at >= :created_after)
  AND (:created_before IS NULL OR created_at < :created_before)
  AND (:app_id IS NULL
       OR function_id IN (SELECT id FROM functions WHERE app_id = :app_id)
       OR (substr(function_id, 1, length(:app_id) + 1) = :app_id || '-'
           AND function_id NOT IN (SELECT id FROM functions WHERE app_id <> :app_id)))
ORDER BY id DESC
LIMIT :limit

-- name: list_runs_by_function
SELECT id, function_id, event_id, status, attempt, idle_reason, output, error, created_at, started_at,
       ended_at, start_deadline, due_at, lease_owner, lease_expires_at, parent_run_id, parent_step_id, batch
FROM runs
WHERE function_id = :function_id
  AND (:status IS NULL OR status = :status)
  AND id < coalesce(:before_id, char(1114111))  -- an index range (an OR would make the page scan from the top)
  AND (:created_after IS NULL OR created_at >= :created_after)
  AND (:created_before IS NULL OR created_at < :created_before)
  AND (:app_id IS NULL
       OR function_id IN (SELECT id FROM functions WHERE app_id = :app_id)
       OR (substr(function_id, 1, length(:app_id) + 1) = :app_id || '-'
           AND function_id NOT IN (SELECT id FROM functions WHERE app_id <> :app_id)))
ORDER BY id DESC
LIMIT :limit

-- name: list_runs_by_status
SELECT id, function_id, event_id, status, attempt, idle_reason, output, error, created_at, started_at,
       ended_at, start_deadline, due_at, lease_owner, lease_expires_at, parent_run_id, parent_step_id, batch
FROM runs
WHERE status = :status
  AND id < coalesce(:before_id, char(1114111))  -- an index range (an OR would make the page scan from the top)
  AND (:created_after IS NULL OR created_at >= :created_after)
  AND (:created_before IS NULL OR created_at < :created_before)
  AND (:app_id IS NULL
       OR function_id IN (SELECT id FROM functions WHERE app_id = :app_id)
       OR (substr(function_id, 1, length(:app_id) + 1) = :app_id || '-'
           AND function_id NOT IN (SELECT id FROM functions WHERE app_id <> :app_id)))
ORDER BY id DESC
LIMIT :limit

-- ----- apps -----

-- name: upsert_app
INSERT INTO apps (url, app_id, sdk, framework, app_version, checksum, synced_at, error, created_at, updated_at)
VALUES (:url, :app_id, :sdk, :framework, :app_version, :checksum, :synced_at, :error, :created_at, :updated_at)
ON CONFLICT (url) DO UPDATE SET
    app_id = excluded.app_id, sdk = excluded.sdk, framework = excluded.framework,
    app_version = excluded.app_version, checksum = excluded.checksum, synced_at = excluded.synced_at,
    error = excluded.error, updated_at = excluded.updated_at

-- name: select_app
SELECT url, app_id, sdk, framework, app_version, checksum, synced_at, error, created_at, updated_at
FROM apps WHERE url = :url

-- name: list_apps
SELECT url, app_id, sdk, framework, app_version, checksum, synced_at, error, created_at, updated_at
FROM apps ORDER BY created_at, url

-- name: delete_app
DELETE FROM apps WHERE url = :url RETURNING app_id

-- name: count_apps_with_app_id
SELECT count(*) FROM apps WHERE app_id = :app_id

-- name: delete_app_functions
DELETE FROM functions WHERE app_id = :app_id

-- ----- runs created directly (rerun) -----

-- name: set_run_idle_reason
UPDATE runs SET idle_reason = :idle_reason WHERE id = :run_id

-- name: insert_step_copy
INSERT INTO steps (run_id, step_id, display_id, kind, status, attempts, output, error, wake_at, started_at,
                   ended_at, seq)
VALUES (:run_id, :step_id, :display_id, :kind, :status, :attempts, :output, :error, :wake_at, :started_at,
        :ended_at, :seq)
ON CONFLICT (run_id, step_id) DO NOTHING

-- ----- bulk cancellations -----

-- name: insert_cancellation
INSERT INTO cancellations (id, app_id, function_id, started_after, started_before, expression, cancelled,
                           created_at)
VALUES (:id, :app_id, :function_id, :started_after, :started_before, :expression, :cancelled, :created_at)
ON CONFLICT (id) DO NOTHING

-- name: list_cancellations
SELECT id, app_id, function_id, started_after, started_before, expression, cancelled, created_at
FROM cancellations ORDER BY created_at DESC, id DESC LIMIT :limit

-- ----- flow control (storage/sql_flow.py) -----

-- name: flow_claim_candidates
-- Due runs of flow-controlled functions, highest priority first (priority_ms moves a run's place in the queue), and
-- the key each was already waiting on (a run checked again while it waits is not blocked anew).
SELECT id, flow, function_id, blocked_on FROM runs
WHERE due_at IS NOT NULL AND due_at <= :now
  AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
  AND function_id IN (SELECT value FROM json_each(:function_ids))
ORDER BY due_at - priority_ms, id
LIMIT :limit

-- name: flow_slots_held
-- Runs holding a slot of this concurrency key: leased by a live worker.
SELECT count(*), min(lease_expires_at) FROM runs
WHERE (ckey1 = :key OR ckey2 = :key) AND lease_owner IS NOT NULL AND lease_expires_at > :now

-- name: flow_claim_one
-- A queued run past its timeouts.start is leased but not started: it stays queued (its worker cancels it).
UPDATE runs
SET status = CASE WHEN status = 'queued' AND (start_deadline IS NULL OR start_deadline >= :now) THEN 'running' ELSE status END,
    started_at = CASE WHEN status = 'queued' AND start_deadline < :now THEN NULL ELSE coalesce(started_at, :now) END,
    lease_owner = :owner,
    lease_expires_at = :lease_until,
    blocked_on = NULL
WHERE id = :id
RETURNING id, function_id, event_id, status, attempt, idle_reason, output, error, created_at, started_at,
          ended_at, start_deadline, due_at, lease_owner, lease_expires_at, parent_run_id, parent_step_id, batch

-- name: flow_block
UPDATE runs SET blocked_on = :key, due_at = :due_at, idle_reason = :idle_reason WHERE id = :id

-- name: flow_wake_blocked
-- A slot of this key was freed: the first run waiting for it (in priority order) is due now.
UPDATE runs SET due_at = :now
WHERE id = (SELECT id FROM runs WHERE blocked_on = :key AND due_at > :now
            AND status IN ('queued', 'running') ORDER BY created_at - priority_ms, id LIMIT 1)

-- name: flow_bucket
-- The bucket's theoretical arrival time (0 for a new bucket); the upsert locks the row until commit.
INSERT INTO flow_buckets (key, tat) VALUES (:key, 0)
ON CONFLICT (key) DO UPDATE SET key = excluded.key
RETURNING tat

-- name: flow_set_bucket
UPDATE flow_buckets SET tat = :tat WHERE key = :key

-- name: flow_pending
-- The open debounce or batch run of this key (this run, if none was open); the upsert locks the row until commit.
INSERT INTO flow_pending (key, run_id, first_at, size) VALUES (:key, :run_id, :now, 1)
ON CONFLICT (key) DO UPDATE SET key = excluded.key
RETURNING run_id, first_at, size

-- name: flow_replace_pending
UPDATE flow_pending SET run_id = :run_id, first_at = :now, size = 1 WHERE key = :key

-- name: flow_grow_pending
UPDATE flow_pending SET size = size + 1 WHERE key = :key

-- name: flow_close_pending
DELETE FROM flow_pending WHERE key = :key

-- name: flow_open_run
-- The open run, if it has not started yet (it still takes events), its due time and why it waits.
SELECT batch, due_at, idle_reason FROM runs
WHERE id = :id AND status = 'queued' AND started_at IS NULL AND lease_owner IS NULL

-- name: flow_debounce_run
-- Never earlier than it is: a throttle may have given the open run a later start.
UPDATE runs SET event_id = :event_id,
                due_at = CASE WHEN due_at > :due_at THEN due_at ELSE :due_at END,
                idle_reason = CASE WHEN due_at > :due_at THEN idle_reason ELSE :idle_reason END
WHERE id = :id AND status = 'queued' AND started_at IS NULL AND lease_owner IS NULL

-- name: flow_batch_run
UPDATE runs SET batch = :batch, due_at = :due_at, idle_reason = :idle_reason
WHERE id = :id AND status = 'queued' AND started_at IS NULL AND lease_owner IS NULL

-- name: flow_singleton_live
SELECT id FROM runs WHERE singleton_key = :key AND status IN ('queued', 'running') ORDER BY id LIMIT 1

-- name: flow_prune_buckets
DELETE FROM flow_buckets WHERE key IN (SELECT key FROM flow_buckets WHERE tat < :now LIMIT :limit)

-- name: flow_prune_pending
DELETE FROM flow_pending WHERE key IN (
    SELECT p.key FROM flow_pending p LEFT JOIN runs r ON r.id = p.run_id
    WHERE r.id IS NULL OR r.started_at IS NOT NULL OR r.status NOT IN ('queued', 'running')
    LIMIT :limit
)

-- ----- cron -----

-- name: cron_state_of_function
SELECT cron, last_fire FROM cron_state WHERE function_id = :function_id

-- name: insert_cron_state
INSERT INTO cron_state (function_id, cron, last_fire) VALUES (:function_id, :cron, :last_fire)
ON CONFLICT (function_id, cron) DO NOTHING

-- name: delete_cron_state_except
DELETE FROM cron_state WHERE function_id = :function_id AND cron NOT IN (SELECT value FROM json_each(:keep))

-- name: advance_cron_state
INSERT INTO cron_state (function_id, cron, last_fire) VALUES (:function_id, :cron, :scheduled)
ON CONFLICT (function_id, cron) DO UPDATE SET last_fire = excluded.last_fire
WHERE cron_state.last_fire < excluded.last_fire
RETURNING last_fire

-- ----- run logs (storage/sql_logs.py) -----

-- name: last_run_log
SELECT seq, message FROM run_logs WHERE run_id = :run_id ORDER BY seq DESC LIMIT 1

-- name: insert_run_logs
INSERT INTO run_logs (run_id, seq, ts, level, logger, message, step_id)
SELECT :run_id, :after + key + 1, json_extract(value, '$[0]'), json_extract(value, '$[1]'),
       json_extract(value, '$[2]'), json_extract(value, '$[3]'), json_extract(value, '$[4]')
FROM json_each(:lines)

-- name: upsert_run_log
INSERT INTO run_logs (run_id, seq, ts, level, logger, message, step_id)
VALUES (:run_id, :seq, :ts, :level, :logger, :message, NULL)
ON CONFLICT (run_id, seq) DO UPDATE SET ts = excluded.ts, message = excluded.message

-- name: list_run_logs
SELECT seq, ts, level, logger, message, step_id FROM run_logs WHERE run_id = :run_id ORDER BY seq LIMIT :limit

-- name: delete_run_logs_of_runs
DELETE FROM run_logs WHERE run_id IN (SELECT value FROM json_each(:ids))

-- name: flow_earliest_due
-- A worker with both plain and flow-controlled functions: is the run that has been due longest a plain one?
-- (Serve that kind first, so neither starves.) An index-ordered read that stops at the first due run.
SELECT function_id IN (SELECT value FROM json_each(:plain_ids)) FROM runs
WHERE due_at IS NOT NULL AND due_at <= :now
  AND (lease_expires_at IS NULL OR lease_expires_at <= :now)
  AND +function_id IN (SELECT value FROM json_each(:all_ids))
ORDER BY due_at
LIMIT 1

-- name: forget_cron_states_except
DELETE FROM cron_state WHERE function_id IN (
    SELECT id FROM functions WHERE app_id = :app_id AND id NOT IN (SELECT value FROM json_each(:keep))
)

-- name: set_run_error
UPDATE runs SET error = :error WHERE id = :run_id
