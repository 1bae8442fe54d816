-- Event searches of the REST API and the dashboard, and paused functions (SQLite). Loaded by ``SqlEventsMixin``.
-- :glob is the name pattern as a GLOB (NULL: any name); a page stops as list_events' does.

-- name: find_events
SELECT internal_id, id, name, data, user, ts, v, received_at FROM (
    SELECT internal_id, id, name, data, user, ts, v, received_at, seq,
           sum(length(data)) OVER (ORDER BY seq DESC ROWS UNBOUNDED PRECEDING) - length(data) AS bytes_before
    FROM events
    WHERE (:glob IS NULL OR name GLOB :glob)
      AND seq < CASE WHEN :before IS NULL THEN 9223372036854775807
                    ELSE (SELECT seq FROM events WHERE internal_id = :before) END
    ORDER BY seq DESC LIMIT :limit
) WHERE bytes_before < :max_bytes ORDER BY seq DESC

-- name: find_public_events
-- Without the internal events: the partial index events_public, in seq order.
SELECT internal_id, id, name, data, user, ts, v, received_at FROM (
    SELECT internal_id, id, name, data, user, ts, v, received_at, seq,
           sum(length(data)) OVER (ORDER BY seq DESC ROWS UNBOUNDED PRECEDING) - length(data) AS bytes_before
    FROM events INDEXED BY events_public
    WHERE substr(name, 1, 9) <> 'stepline/' AND substr(name, 1, 8) <> 'inngest/'
      AND (:glob IS NULL OR name GLOB :glob)
      AND seq < CASE WHEN :before IS NULL THEN 9223372036854775807
                    ELSE (SELECT seq FROM events WHERE internal_id = :before) END
    ORDER BY seq DESC LIMIT :limit
) WHERE bytes_before < :max_bytes ORDER BY seq DESC

-- name: runs_of_events
-- The runs each event started (runs_event index), oldest first.
SELECT event_id, id, function_id, status FROM runs WHERE event_id IN (SELECT value FROM json_each(:ids_json)) ORDER BY id

-- name: pause_function
INSERT INTO function_pauses (function_id, paused_at) VALUES (:function_id, :now) ON CONFLICT (function_id) DO NOTHING

-- name: resume_function
DELETE FROM function_pauses WHERE function_id = :function_id

-- name: paused_functions
SELECT function_id, paused_at FROM function_pauses

-- name: count_prefix
-- How many events (up to :cap) have a name starting with a literal prefix: an index range of (name, seq).
SELECT count(*) FROM (SELECT 1 FROM events INDEXED BY events_name_seq WHERE name >= :low AND name < :high LIMIT :cap)

-- name: find_events_in_prefix
-- A pattern whose literal prefix few events have: read them by the (name, seq) index and order them, instead of
-- stepping through every newer event. :internal 0 leaves the engine's own events out.
SELECT internal_id, id, name, data, user, ts, v, received_at FROM (
    SELECT internal_id, id, name, data, user, ts, v, received_at, seq,
           sum(length(data)) OVER (ORDER BY seq DESC ROWS UNBOUNDED PRECEDING) - length(data) AS bytes_before
    FROM events INDEXED BY events_name_seq
    WHERE name >= :low AND name < :high AND name GLOB :glob
      AND (:internal OR (substr(name, 1, 9) <> 'stepline/' AND substr(name, 1, 8) <> 'inngest/'))
      AND seq < CASE WHEN :before IS NULL THEN 9223372036854775807
                    ELSE (SELECT seq FROM events WHERE internal_id = :before) END
    ORDER BY seq DESC LIMIT :limit
) WHERE bytes_before < :max_bytes ORDER BY seq DESC
