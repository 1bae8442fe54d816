-- Stepline PostgreSQL queries. Parameters are named (%(name)s, psycopg style). Times are unix milliseconds.
-- JSON goes in as text and comes out as text (::text), so the shared code sees the same values as with SQLite.
-- What user code produced or sent (event payloads, step and run results and errors) is json, kept as written
-- (migration 0007); Stepline's own documents (configs, idle reasons, flow keys) are jsonb.

-- name: insert_event
INSERT INTO events (internal_id, id, name, data, "user", ts, v, received_at, traceparent)
VALUES (%(internal_id)s, %(id)s, %(name)s, %(data)s::json, %(user)s::json, %(ts)s, %(v)s, %(received_at)s,
        %(traceparent)s)
ON CONFLICT (internal_id) DO NOTHING

-- name: names_with_waits
SELECT DISTINCT event_name FROM waits WHERE event_name = ANY(%(names)s::text[])

-- name: lock_names_and_registry_version
-- An ingest's first statement: the shared per-name locks (``_lock_for_ingest``) and the registry version.
SELECT (SELECT version FROM registry_version),
       (SELECT count(pg_advisory_xact_lock_shared(hashtextextended(n, 0))) FROM unnest(%(names)s::text[]) AS n)

-- name: insert_events_and_waits
-- The events (arrays of equal length, in order) and names_with_waits in one statement, whose snapshot is taken
-- after the locks of the statement before were granted: ('e', internal id) for each event stored now (not stored
-- before), ('w', name) for each of the names that some wait waits for.
WITH stored AS (
    INSERT INTO events (internal_id, id, name, data, "user", ts, v, received_at, traceparent)
    SELECT internal_id, id, name, data::json, u::json, ts, v, received_at, traceparent
    FROM unnest(%(internal_id)s::text[], %(id)s::text[], %(name)s::text[], %(data)s::text[], %(user)s::text[],
                %(ts)s::bigint[], %(v)s::text[], %(received_at)s::bigint[], %(traceparent)s::text[])
         WITH ORDINALITY AS e(internal_id, id, name, data, u, ts, v, received_at, traceparent, ord)
    ORDER BY ord
    ON CONFLICT (internal_id) DO NOTHING
    RETURNING internal_id
)
SELECT 'e', internal_id FROM stored
UNION ALL
SELECT DISTINCT 'w', event_name FROM waits WHERE event_name = ANY(%(names)s::text[])

-- name: insert_plain_runs
-- Queued runs without ingest gates (concurrency keys and priority only), many in one statement.
INSERT INTO runs (id, function_id, event_id, batch, status, created_at, start_deadline, due_at,
                  parent_run_id, parent_step_id, flow, ckey1, ckey2, priority_ms)
SELECT id, function_id, event_id, batch::jsonb, 'queued', created_at, start_deadline, due_at,
       parent_run_id, parent_step_id, flow::jsonb, ckey1, ckey2, priority_ms
FROM unnest(%(id)s::text[], %(function_id)s::text[], %(event_id)s::text[], %(batch)s::text[],
            %(created_at)s::bigint[], %(start_deadline)s::bigint[], %(due_at)s::bigint[], %(parent_run_id)s::text[],
            %(parent_step_id)s::text[], %(flow)s::text[], %(ckey1)s::text[], %(ckey2)s::text[],
            %(priority_ms)s::bigint[])
     AS r(id, function_id, event_id, batch, created_at, start_deadline, due_at, parent_run_id, parent_step_id,
          flow, ckey1, ckey2, priority_ms)
ON CONFLICT (id) DO NOTHING

-- name: event_cursor
SELECT pg_current_snapshot()::text

-- name: select_events_by_ids
SELECT internal_id, id, name, data::text, "user"::text, ts, v, received_at, traceparent FROM events
WHERE internal_id IN (SELECT jsonb_array_elements_text(%(ids)s::jsonb))

-- name: select_event
SELECT internal_id, id, name, data::text, "user"::text, ts, v, received_at, traceparent FROM events WHERE internal_id = %(internal_id)s

-- name: list_events
-- A page stops before the event that would take its data past %(max_bytes)s (it holds at least one event).
SELECT internal_id, id, name, data, "user", ts, v, received_at FROM (
    SELECT internal_id, id, name, data::text AS data, "user"::text AS "user", ts, v, received_at, seq,
           sum(octet_length(data::text)) OVER (ORDER BY seq DESC ROWS UNBOUNDED PRECEDING)
               - octet_length(data::text) AS bytes_before
    FROM events
    WHERE (%(name)s::text IS NULL OR name = %(name)s)
      AND (%(before)s::text IS NULL OR seq < (SELECT seq FROM events WHERE internal_id = %(before)s))
    ORDER BY seq DESC LIMIT %(limit)s
) page WHERE bytes_before < %(max_bytes)s ORDER BY seq DESC

-- name: events_after_cursor
SELECT internal_id, id, name, data::text, "user"::text, ts, v, received_at FROM events
WHERE name = %(name)s AND NOT pg_visible_in_snapshot(xact, %(since)s::pg_snapshot) ORDER BY seq

-- name: upsert_function
INSERT INTO functions (id, app_id, slug, name, config, updated_at)
VALUES (%(id)s, %(app_id)s, %(slug)s, %(name)s, %(config)s::jsonb, %(now)s)
ON CONFLICT (id) DO UPDATE SET name = excluded.name, config = excluded.config, updated_at = excluded.updated_at
WHERE functions.config IS DISTINCT FROM excluded.config OR functions.name IS DISTINCT FROM excluded.name

-- name: delete_app_functions_except
DELETE FROM functions WHERE app_id = %(app_id)s AND id NOT IN (SELECT jsonb_array_elements_text(%(keep)s::jsonb))

-- name: bump_registry_version
UPDATE registry_version SET version = version + 1 RETURNING version

-- name: registry_version
SELECT version FROM registry_version

-- name: list_functions
SELECT id, app_id, slug, name, config::text FROM functions ORDER BY id

-- name: claim_idempotency_key
INSERT INTO idempotency (function_id, key, run_id, expires_at)
VALUES (%(function_id)s, %(key)s, %(run_id)s, %(expires_at)s)
ON CONFLICT (function_id, key) DO UPDATE SET
    run_id = CASE WHEN idempotency.expires_at <= %(now)s THEN excluded.run_id ELSE idempotency.run_id END,
    expires_at = CASE WHEN idempotency.expires_at <= %(now)s THEN excluded.expires_at ELSE idempotency.expires_at END
RETURNING run_id

-- name: insert_run
INSERT INTO runs (id, function_id, event_id, batch, status, created_at, start_deadline, due_at,
                  parent_run_id, parent_step_id, idle_reason, flow, ckey1, ckey2, priority_ms, singleton_key,
                  ended_at)
VALUES (%(id)s, %(function_id)s, %(event_id)s, %(batch)s::jsonb, %(status)s, %(created_at)s, %(start_deadline)s, %(due_at)s,
        %(parent_run_id)s, %(parent_step_id)s, %(idle_reason)s::jsonb, %(flow)s::jsonb, %(ckey1)s, %(ckey2)s, %(priority_ms)s,
        %(singleton_key)s, %(ended_at)s)
ON CONFLICT (id) DO NOTHING

-- name: lease_endpoint_run
-- A durable endpoint's run, inserted queued: the app runs it, so it starts running under the app's lease.
UPDATE runs SET status = 'running', started_at = %(now)s, lease_owner = %(owner)s, lease_expires_at = %(lease_until)s
WHERE id = %(run_id)s AND status = 'queued'

-- name: insert_wait
INSERT INTO waits (run_id, step_id, kind, event_name, expression, expires_at)
VALUES (%(run_id)s, %(step_id)s, %(kind)s, %(event_name)s, %(expression)s, %(expires_at)s)

-- name: waits_for_event
SELECT w.id, w.run_id, w.step_id, w.kind, w.expression,
       e.internal_id, e.id, e.name, e.data::text, e."user"::text, e.ts, e.v, e.received_at
FROM waits w
JOIN runs r ON r.id = w.run_id
JOIN events e ON e.internal_id = r.event_id
WHERE w.event_name = %(event_name)s AND w.expires_at > %(now)s AND r.status IN ('queued', 'running')
ORDER BY w.id

-- name: delete_wait
DELETE FROM waits WHERE id = %(id)s

-- name: signal_wait
-- The live wait for a signal (at most one: registering a second one conflicts or replaces it).
SELECT w.id, w.run_id, w.step_id
FROM waits w JOIN runs r ON r.id = w.run_id
WHERE w.event_name = %(name)s AND w.kind = 'signal' AND w.expires_at > %(now)s AND r.status IN ('queued', 'running')
ORDER BY w.id
LIMIT 1

-- name: delete_run_waits
DELETE FROM waits WHERE run_id = %(run_id)s

-- name: delete_step_wait
DELETE FROM waits WHERE run_id = %(run_id)s AND step_id = %(step_id)s

-- name: claim_runs
-- A queued run past its timeouts.start is leased but not started: it stays queued (its worker cancels it).
UPDATE runs
SET status = CASE WHEN status = 'queued' AND (start_deadline IS NULL OR start_deadline >= %(now)s) THEN 'running' ELSE status END,
    started_at = CASE WHEN status = 'queued' AND start_deadline < %(now)s THEN NULL ELSE coalesce(started_at, %(now)s) END,
    lease_owner = %(owner)s,
    lease_expires_at = %(lease_until)s
WHERE id IN (
    SELECT id FROM runs
    WHERE due_at IS NOT NULL AND due_at <= %(now)s
      AND (lease_expires_at IS NULL OR lease_expires_at <= %(now)s)
      AND function_id IN (SELECT jsonb_array_elements_text(%(function_ids)s::jsonb))
    ORDER BY due_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id, function_id, event_id, status, attempt, idle_reason::text, output::text, error::text, created_at,
          started_at, ended_at, start_deadline, due_at, lease_owner, lease_expires_at, parent_run_id,
          parent_step_id, batch::text

-- name: renew_leases
-- Rows locked by an in-flight write (often this node's own, finishing the run) are skipped, not waited for:
-- waiting could deadlock with a batch that locks the same rows in another order. They are renewed next time.
UPDATE runs SET lease_expires_at = %(lease_until)s
WHERE id IN (
    SELECT id FROM runs
    WHERE lease_owner = %(owner)s AND id IN (SELECT jsonb_array_elements_text(%(ids)s::jsonb))
    ORDER BY id
    FOR UPDATE SKIP LOCKED
)

-- name: leases_not_held
SELECT i FROM jsonb_array_elements_text(%(ids)s::jsonb) AS i
WHERE i NOT IN (SELECT id FROM runs WHERE lease_owner = %(owner)s AND id IN (SELECT jsonb_array_elements_text(%(ids)s::jsonb)))

-- name: release_run
UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL, due_at = %(due_at)s
WHERE id = %(run_id)s AND lease_owner = %(owner)s AND status IN ('queued', 'running')
RETURNING ckey1, ckey2

-- name: run_lease
-- Locks the row: a claim by another node (FOR UPDATE SKIP LOCKED) cannot take the run between this check and
-- the write that follows it in the same transaction.
SELECT status, lease_owner FROM runs WHERE id = %(run_id)s FOR UPDATE

-- name: select_steps_for_runs
SELECT run_id, step_id, display_id, kind, status, attempts, output::text, error::text, wake_at, started_at,
       ended_at, race
FROM steps WHERE run_id IN (SELECT jsonb_array_elements_text(%(ids)s::jsonb)) ORDER BY run_id, seq

-- name: select_step
SELECT run_id, step_id, display_id, kind, status, attempts, output::text, error::text, wake_at, started_at,
       ended_at, race
FROM steps WHERE run_id = %(run_id)s AND step_id = %(step_id)s

-- name: upsert_step
INSERT INTO steps (run_id, step_id, display_id, kind, status, attempts, output, error, wake_at, started_at,
                   ended_at, seq, race)
VALUES (%(run_id)s, %(step_id)s, %(display_id)s, %(kind)s, %(status)s, %(attempts)s, %(output)s::json,
        %(error)s::json, %(wake_at)s, %(started)s,
        %(ended_at)s, (SELECT coalesce(max(seq), 0) + 1 FROM steps WHERE run_id = %(run_id)s), %(race)s)
ON CONFLICT (run_id, step_id) DO UPDATE SET
    status = excluded.status, attempts = excluded.attempts, output = excluded.output,
    error = coalesce(excluded.error, steps.error),  -- a step that succeeds on a retry keeps its last error
    wake_at = excluded.wake_at, ended_at = excluded.ended_at, race = coalesce(excluded.race, steps.race)
WHERE steps.status NOT IN ('completed', 'failed')
RETURNING run_id, step_id, display_id, kind, status, attempts, output::text, error::text, wake_at, started_at,
          ended_at, race

-- name: complete_pending_step
UPDATE steps SET status = %(status)s, output = %(output)s::json, error = %(error)s::json, wake_at = NULL,
                 ended_at = %(now)s
WHERE run_id = %(run_id)s AND step_id = %(step_id)s AND status NOT IN ('completed', 'failed')

-- name: suspend_run
UPDATE runs SET due_at = %(due_at)s, idle_reason = %(idle_reason)s::jsonb, lease_owner = NULL, lease_expires_at = NULL,
                attempt = coalesce(%(attempt)s::integer, attempt)
WHERE id = %(run_id)s
RETURNING ckey1, ckey2

-- name: wake_run
UPDATE runs SET due_at = %(now)s, idle_reason = NULL
WHERE id = %(run_id)s AND status IN ('queued', 'running') AND (due_at IS NULL OR due_at > %(now)s)

-- name: retry_run
UPDATE runs SET attempt = coalesce(%(attempt)s::integer, attempt + 1), due_at = %(due_at)s, error = %(error)s::json,
                idle_reason = %(idle_reason)s::jsonb,
                lease_owner = NULL, lease_expires_at = NULL
WHERE id = %(run_id)s
RETURNING ckey1, ckey2

-- name: finish_run
UPDATE runs SET status = %(status)s, output = %(output)s::json, error = %(error)s::json, ended_at = %(now)s,
                due_at = NULL,
                idle_reason = NULL, lease_owner = NULL, lease_expires_at = NULL
WHERE id = %(run_id)s AND status IN ('queued', 'running')
  AND (%(owner)s::text IS NULL OR lease_owner = %(owner)s)
RETURNING parent_run_id, parent_step_id, started_at, function_id, ckey1, ckey2

-- name: finish_runs
-- finish_run for many runs at once (distinct ids); returns the id of each run it ended, then finish_run's columns.
UPDATE runs SET status = f.status, output = f.output::json, error = f.error::json, ended_at = f.now,
                due_at = NULL, idle_reason = NULL, lease_owner = NULL, lease_expires_at = NULL
FROM unnest(%(id)s::text[], %(status)s::text[], %(output)s::text[], %(error)s::text[], %(now)s::bigint[],
            %(owner)s::text[]) AS f(id, status, output, error, now, owner)
WHERE runs.id = f.id AND runs.status IN ('queued', 'running') AND (f.owner IS NULL OR runs.lease_owner = f.owner)
RETURNING runs.id, parent_run_id, parent_step_id, started_at, function_id, ckey1, ckey2

-- name: insert_end_steps
-- Completed or failed results of ended runs' last steps (one per run); returns the ones written (first write wins).
INSERT INTO steps (run_id, step_id, display_id, kind, status, attempts, output, error, wake_at, started_at,
                   ended_at, seq)
SELECT s.run_id, s.step_id, s.display_id, s.kind, s.status, s.attempts, s.output::json, s.error::json, NULL,
       s.started, s.now, (SELECT coalesce(max(seq), 0) + 1 FROM steps WHERE steps.run_id = s.run_id)
FROM unnest(%(run_id)s::text[], %(step_id)s::text[], %(display_id)s::text[], %(kind)s::text[], %(status)s::text[],
            %(attempts)s::int[], %(output)s::text[], %(error)s::text[], %(now)s::bigint[], %(started)s::bigint[])
     AS s(run_id, step_id, display_id, kind, status, attempts, output, error, now, started)
ON CONFLICT (run_id, step_id) DO UPDATE SET
    status = excluded.status, attempts = excluded.attempts, output = excluded.output,
    error = coalesce(excluded.error, steps.error), wake_at = NULL, ended_at = excluded.ended_at
WHERE steps.status NOT IN ('completed', 'failed')
RETURNING run_id, step_id

-- name: select_run
SELECT id, function_id, event_id, status, attempt, idle_reason::text, output::text, error::text, created_at,
       started_at, ended_at, start_deadline, due_at, lease_owner, lease_expires_at, parent_run_id, parent_step_id,
       batch::text
FROM runs WHERE id = %(run_id)s

-- name: list_runs
SELECT id, function_id, event_id, status, attempt, idle_reason::text, output::text, error::text, created_at,
       started_at, ended_at, start_deadline, due_at, lease_owner, lease_expires_at, parent_run_id, parent_step_id,
       batch::text
FROM runs
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(function_id)s::text IS NULL OR function_id = %(function_id)s)
  AND (%(event_id)s::text IS NULL OR event_id = %(event_id)s)
  AND (%(before_id)s::text IS NULL OR id < %(before_id)s)
  AND (%(created_after)s::bigint IS NULL OR created_at >= %(created_after)s)
  AND (%(created_before)s::bigint IS NULL OR created_at < %(created_before)s)
  AND (%(app_id)s::text IS NULL
       OR function_id IN (SELECT id FROM functions WHERE app_id = %(app_id)s::text)
       OR (left(function_id, length(%(app_id)s::text) + 1) = %(app_id)s::text || '-'
           AND function_id NOT IN (SELECT id FROM functions WHERE app_id <> %(app_id)s::text)))
ORDER BY id DESC
LIMIT %(limit)s

-- name: list_steps
SELECT run_id, step_id, display_id, kind, status, attempts, output::text, error::text, wake_at, started_at,
       ended_at, race
FROM steps WHERE run_id = %(run_id)s ORDER BY seq

-- name: next_due_at
-- The earliest of: the first due time of a run nobody holds (read in due_at order: it stops at the first row, however
-- many runs wait for later), and the first lease expiry of a held run (few: as many as execute now).
SELECT min(t) FROM (
    (SELECT due_at AS t FROM runs
     WHERE due_at IS NOT NULL AND (lease_expires_at IS NULL OR lease_expires_at <= due_at)
       AND function_id IN (SELECT jsonb_array_elements_text(%(function_ids)s::jsonb))
     ORDER BY due_at LIMIT 1)
    UNION ALL
    SELECT lease_expires_at FROM runs
    WHERE lease_owner IS NOT NULL AND due_at IS NOT NULL AND lease_expires_at > due_at
      AND function_id IN (SELECT jsonb_array_elements_text(%(function_ids)s::jsonb))
) AS next_times

-- name: prunable_runs_of_function
SELECT id FROM runs
WHERE ended_at IS NOT NULL AND ended_at < %(cutoff)s AND function_id = %(function_id)s
LIMIT %(limit)s

-- name: prunable_runs_except
SELECT id FROM runs
WHERE ended_at IS NOT NULL AND ended_at < %(cutoff)s
  AND function_id NOT IN (SELECT jsonb_array_elements_text(%(except_ids)s::jsonb))
LIMIT %(limit)s

-- name: delete_steps_of_runs
DELETE FROM steps WHERE run_id IN (SELECT jsonb_array_elements_text(%(ids)s::jsonb))

-- name: delete_runs
DELETE FROM runs WHERE id IN (SELECT jsonb_array_elements_text(%(ids)s::jsonb))

-- name: delete_unreferenced_events
DELETE FROM events WHERE seq IN (
    SELECT e.seq FROM events e
    WHERE e.received_at < %(cutoff)s
      AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.event_id = e.internal_id)
    LIMIT %(limit)s
)

-- name: delete_expired_idempotency
DELETE FROM idempotency WHERE (function_id, key) IN (
    SELECT function_id, key FROM idempotency WHERE expires_at < %(now)s LIMIT %(limit)s
)

-- name: delete_run_waits_of_runs
DELETE FROM waits WHERE run_id IN (SELECT jsonb_array_elements_text(%(ids)s::jsonb))

-- ----- REST API and dashboard: run and event lists driven by the most selective index -----

-- name: list_events_by_name
SELECT internal_id, id, name, data, "user", ts, v, received_at FROM (
    SELECT internal_id, id, name, data::text AS data, "user"::text AS "user", ts, v, received_at, seq,
           sum(octet_length(data::text)) OVER (ORDER BY seq DESC ROWS UNBOUNDED PRECEDING)
               - octet_length(data::text) AS bytes_before
    FROM events
    WHERE name = %(name)s
      AND (%(before)s::text IS NULL OR seq < (SELECT seq FROM events WHERE internal_id = %(before)s))
    ORDER BY seq DESC LIMIT %(limit)s
) page WHERE bytes_before < %(max_bytes)s ORDER BY seq DESC

-- name: list_runs_by_event
SELECT id, function_id, event_id, status, attempt, idle_reason::text, output::text, error::text, created_at,
       started_at, ended_at, start_deadline, due_at, lease_owner, lease_expires_at, parent_run_id, parent_step_id,
       batch::text
FROM runs
WHERE event_id = %(event_id)s
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(function_id)s::text IS NULL OR function_id = %(function_id)s)
  AND (%(before_id)s::text IS NULL OR id < %(before_id)s)
  AND (%(created_after)s::bigint IS NULL OR created_at >= %(created_after)s)
  AND (%(created_before)s::bigint IS NULL OR created_at < %(created_before)s)
  AND (%(app_id)s::text IS NULL
       OR function_id IN (SELECT id FROM functions WHERE app_id = %(app_id)s::text)
       OR (left(function_id, length(%(app_id)s::text) + 1) = %(app_id)s::text || '-'
           AND function_id NOT IN (SELECT id FROM functions WHERE app_id <> %(app_id)s::text)))
ORDER BY id DESC
LIMIT %(limit)s

-- name: list_runs_by_function
SELECT id, function_id, event_id, status, attempt, idle_reason::text, output::text, error::text, created_at,
       started_at, ended_at, start_deadline, due_at, lease_owner, lease_expires_at, parent_run_id, parent_step_id,
       batch::text
FROM runs
WHERE function_id = %(function_id)s
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(before_id)s::text IS NULL OR id < %(before_id)s)
  AND (%(created_after)s::bigint IS NULL OR created_at >= %(created_after)s)
  AND (%(created_before)s::bigint IS NULL OR created_at < %(created_before)s)
  AND (%(app_id)s::text IS NULL
       OR function_id IN (SELECT id FROM functions WHERE app_id = %(app_id)s::text)
       OR (left(function_id, length(%(app_id)s::text) + 1) = %(app_id)s::text || '-'
           AND function_id NOT IN (SELECT id FROM functions WHERE app_id <> %(app_id)s::text)))
ORDER BY id DESC
LIMIT %(limit)s

-- name: list_runs_by_status
SELECT id, function_id, event_id, status, attempt, idle_reason::text, output::text, error::text, created_at,
       started_at, ended_at, start_deadline, due_at, lease_owner, lease_expires_at, parent_run_id, parent_step_id,
       batch::text
FROM runs
WHERE status = %(status)s
  AND (%(before_id)s::text IS NULL OR id < %(before_id)s)
  AND (%(created_after)s::bigint IS NULL OR created_at >= %(created_after)s)
  AND (%(created_before)s::bigint IS NULL OR created_at < %(created_before)s)
  AND (%(app_id)s::text IS NULL
       OR function_id IN (SELECT id FROM functions WHERE app_id = %(app_id)s::text)
       OR (left(function_id, length(%(app_id)s::text) + 1) = %(app_id)s::text || '-'
           AND function_id NOT IN (SELECT id FROM functions WHERE app_id <> %(app_id)s::text)))
ORDER BY id DESC
LIMIT %(limit)s

-- ----- apps -----

-- name: upsert_app
INSERT INTO apps (url, app_id, sdk, framework, app_version, checksum, synced_at, error, created_at, updated_at)
VALUES (%(url)s, %(app_id)s, %(sdk)s, %(framework)s, %(app_version)s, %(checksum)s, %(synced_at)s, %(error)s,
        %(created_at)s, %(updated_at)s)
ON CONFLICT (url) DO UPDATE SET
    app_id = excluded.app_id, sdk = excluded.sdk, framework = excluded.framework,
    app_version = excluded.app_version, checksum = excluded.checksum, synced_at = excluded.synced_at,
    error = excluded.error, updated_at = excluded.updated_at

-- name: select_app
SELECT url, app_id, sdk, framework, app_version, checksum, synced_at, error, created_at, updated_at
FROM apps WHERE url = %(url)s

-- name: list_apps
SELECT url, app_id, sdk, framework, app_version, checksum, synced_at, error, created_at, updated_at
FROM apps ORDER BY created_at, url

-- name: delete_app
DELETE FROM apps WHERE url = %(url)s RETURNING app_id

-- name: count_apps_with_app_id
SELECT count(*) FROM apps WHERE app_id = %(app_id)s

-- name: delete_app_functions
DELETE FROM functions WHERE app_id = %(app_id)s

-- ----- runs created directly (rerun) -----

-- name: set_run_idle_reason
UPDATE runs SET idle_reason = %(idle_reason)s::jsonb WHERE id = %(run_id)s

-- name: insert_step_copy
INSERT INTO steps (run_id, step_id, display_id, kind, status, attempts, output, error, wake_at, started_at,
                   ended_at, seq)
VALUES (%(run_id)s, %(step_id)s, %(display_id)s, %(kind)s, %(status)s, %(attempts)s, %(output)s::json,
        %(error)s::json, %(wake_at)s, %(started_at)s, %(ended_at)s, %(seq)s)
ON CONFLICT (run_id, step_id) DO NOTHING

-- ----- bulk cancellations -----

-- name: insert_cancellation
INSERT INTO cancellations (id, app_id, function_id, started_after, started_before, expression, cancelled,
                           created_at)
VALUES (%(id)s, %(app_id)s, %(function_id)s, %(started_after)s, %(started_before)s, %(expression)s, %(cancelled)s,
        %(created_at)s)
ON CONFLICT (id) DO NOTHING

-- name: list_cancellations
SELECT id, app_id, function_id, started_after, started_before, expression, cancelled, created_at
FROM cancellations ORDER BY created_at DESC, id DESC LIMIT %(limit)s

-- ----- flow control (storage/sql_flow.py) -----

-- name: flow_claim_candidates
-- Due runs of flow-controlled functions, highest priority first (priority_ms moves a run's place in the queue), and
-- the key each was already waiting on (a run checked again while it waits is not blocked anew).
SELECT id, flow::text, function_id, blocked_on FROM runs
WHERE due_at IS NOT NULL AND due_at <= %(now)s
  AND (lease_expires_at IS NULL OR lease_expires_at <= %(now)s)
  AND function_id IN (SELECT jsonb_array_elements_text(%(function_ids)s::jsonb))
ORDER BY due_at - priority_ms, id
LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED

-- name: flow_slots_held
-- Runs holding a slot of this concurrency key: leased by a live worker.
SELECT count(*), min(lease_expires_at) FROM runs
WHERE (ckey1 = %(key)s OR ckey2 = %(key)s) AND lease_owner IS NOT NULL AND lease_expires_at > %(now)s

-- name: flow_claim_one
-- A queued run past its timeouts.start is leased but not started: it stays queued (its worker cancels it).
UPDATE runs
SET status = CASE WHEN status = 'queued' AND (start_deadline IS NULL OR start_deadline >= %(now)s) THEN 'running' ELSE status END,
    started_at = CASE WHEN status = 'queued' AND start_deadline < %(now)s THEN NULL ELSE coalesce(started_at, %(now)s) END,
    lease_owner = %(owner)s,
    lease_expires_at = %(lease_until)s,
    blocked_on = NULL
WHERE id = %(id)s
RETURNING id, function_id, event_id, status, attempt, idle_reason::text, output::text, error::text, created_at,
          started_at, ended_at, start_deadline, due_at, lease_owner, lease_expires_at, parent_run_id,
          parent_step_id, batch::text

-- name: flow_block
UPDATE runs SET blocked_on = %(key)s, due_at = %(due_at)s, idle_reason = %(idle_reason)s::jsonb WHERE id = %(id)s

-- name: flow_wake_blocked
-- A slot of this key was freed: the first run waiting for it (in priority order) is due now. A waiting run locked
-- by another transaction is skipped, never waited for: that is a claim holding it as a candidate (it takes the
-- run or blocks it again), and waiting for its row while holding this key's lock would deadlock with it.
UPDATE runs SET due_at = %(now)s
WHERE id = (SELECT id FROM runs WHERE blocked_on = %(key)s AND due_at > %(now)s
            AND status IN ('queued', 'running') ORDER BY created_at - priority_ms, id LIMIT 1
            FOR UPDATE SKIP LOCKED)

-- name: flow_bucket
-- The bucket's theoretical arrival time (0 for a new bucket); the upsert locks the row until commit.
INSERT INTO flow_buckets (key, tat) VALUES (%(key)s, 0)
ON CONFLICT (key) DO UPDATE SET key = excluded.key
RETURNING tat

-- name: flow_set_bucket
UPDATE flow_buckets SET tat = %(tat)s WHERE key = %(key)s

-- name: flow_pending
-- The open debounce or batch run of this key (this run, if none was open); the upsert locks the row until commit.
INSERT INTO flow_pending (key, run_id, first_at, size) VALUES (%(key)s, %(run_id)s, %(now)s, 1)
ON CONFLICT (key) DO UPDATE SET key = excluded.key
RETURNING run_id, first_at, size

-- name: flow_replace_pending
UPDATE flow_pending SET run_id = %(run_id)s, first_at = %(now)s, size = 1 WHERE key = %(key)s

-- name: flow_grow_pending
UPDATE flow_pending SET size = size + 1 WHERE key = %(key)s

-- name: flow_close_pending
DELETE FROM flow_pending WHERE key = %(key)s

-- name: flow_open_run
-- The open run, if it has not started yet (it still takes events), its due time and why it waits.
SELECT batch::text, due_at, idle_reason::text FROM runs
WHERE id = %(id)s AND status = 'queued' AND started_at IS NULL AND lease_owner IS NULL

-- name: flow_debounce_run
-- Never earlier than it is: a throttle may have given the open run a later start.
UPDATE runs SET event_id = %(event_id)s,
                due_at = CASE WHEN due_at > %(due_at)s THEN due_at ELSE %(due_at)s END,
                idle_reason = CASE WHEN due_at > %(due_at)s THEN idle_reason ELSE %(idle_reason)s::jsonb END
WHERE id = %(id)s AND status = 'queued' AND started_at IS NULL AND lease_owner IS NULL

-- name: flow_batch_run
UPDATE runs SET batch = %(batch)s::jsonb, due_at = %(due_at)s, idle_reason = %(idle_reason)s::jsonb
WHERE id = %(id)s AND status = 'queued' AND started_at IS NULL AND lease_owner IS NULL

-- name: flow_singleton_live
SELECT id FROM runs WHERE singleton_key = %(key)s AND status IN ('queued', 'running') ORDER BY id LIMIT 1

-- name: flow_prune_buckets
DELETE FROM flow_buckets WHERE key IN (SELECT key FROM flow_buckets WHERE tat < %(now)s LIMIT %(limit)s)

-- name: flow_prune_pending
DELETE FROM flow_pending WHERE key IN (
    SELECT p.key FROM flow_pending p LEFT JOIN runs r ON r.id = p.run_id
    WHERE r.id IS NULL OR r.started_at IS NOT NULL OR r.status NOT IN ('queued', 'running')
    LIMIT %(limit)s
)

-- ----- cron -----

-- name: cron_state_of_function
SELECT cron, last_fire FROM cron_state WHERE function_id = %(function_id)s

-- name: insert_cron_state
INSERT INTO cron_state (function_id, cron, last_fire) VALUES (%(function_id)s, %(cron)s, %(last_fire)s)
ON CONFLICT (function_id, cron) DO NOTHING

-- name: delete_cron_state_except
DELETE FROM cron_state
WHERE function_id = %(function_id)s AND cron NOT IN (SELECT jsonb_array_elements_text(%(keep)s::jsonb))

-- name: advance_cron_state
INSERT INTO cron_state (function_id, cron, last_fire) VALUES (%(function_id)s, %(cron)s, %(scheduled)s)
ON CONFLICT (function_id, cron) DO UPDATE SET last_fire = excluded.last_fire
WHERE cron_state.last_fire < excluded.last_fire
RETURNING last_fire

-- ----- run logs (storage/sql_logs.py) -----

-- name: last_run_log
SELECT seq, message FROM run_logs WHERE run_id = %(run_id)s ORDER BY seq DESC LIMIT 1

-- name: insert_run_logs
INSERT INTO run_logs (run_id, seq, ts, level, logger, message, step_id)
SELECT %(run_id)s, %(after)s + t.n, (t.v ->> 0)::bigint, t.v ->> 1, t.v ->> 2, t.v ->> 3, t.v ->> 4
FROM jsonb_array_elements(%(lines)s::jsonb) WITH ORDINALITY AS t(v, n)

-- name: upsert_run_log
INSERT INTO run_logs (run_id, seq, ts, level, logger, message, step_id)
VALUES (%(run_id)s, %(seq)s, %(ts)s, %(level)s, %(logger)s, %(message)s, NULL)
ON CONFLICT (run_id, seq) DO UPDATE SET ts = excluded.ts, message = excluded.message

-- name: list_run_logs
SELECT seq, ts, level, logger, message, step_id FROM run_logs WHERE run_id = %(run_id)s ORDER BY seq
LIMIT %(limit)s

-- name: delete_run_logs_of_runs
DELETE FROM run_logs WHERE run_id IN (SELECT jsonb_array_elements_text(%(ids)s::jsonb))

-- name: flow_earliest_due
-- A worker with both plain and flow-controlled functions: is the run that has been due longest a plain one?
-- (Serve that kind first, so neither starves.) An index-ordered read that stops at the first due run.
SELECT function_id IN (SELECT jsonb_array_elements_text(%(plain_ids)s::jsonb)) FROM runs
WHERE due_at IS NOT NULL AND due_at <= %(now)s
  AND (lease_expires_at IS NULL OR lease_expires_at <= %(now)s)
  AND function_id IN (SELECT jsonb_array_elements_text(%(all_ids)s::jsonb))
ORDER BY due_at
LIMIT 1

-- name: forget_cron_states_except
DELETE FROM cron_state WHERE function_id IN (
    SELECT id FROM functions WHERE app_id = %(app_id)s AND id NOT IN (SELECT jsonb_array_elements_text(%(keep)s::jsonb))
)

-- name: set_run_error
UPDATE runs SET error = %(error)s::json WHERE id = %(run_id)s
