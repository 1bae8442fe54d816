-- Event searches of the REST API and the dashboard, and paused functions (PostgreSQL). Loaded by ``SqlEventsMixin``.
-- %(like)s is the name pattern as a LIKE (NULL: any name); a page stops as list_events' does.

-- name: find_events
SELECT internal_id, id, name, data, "user", ts, v, received_at FROM (
    SELECT internal_id, id, name, data::text AS data, "user"::text AS "user", ts, v, received_at, seq,
           sum(octet_length(data::text)) OVER (ORDER BY seq DESC ROWS UNBOUNDED PRECEDING)
               - octet_length(data::text) AS bytes_before
    FROM events
    WHERE (%(like)s::text IS NULL OR name LIKE %(like)s)
      AND (%(before)s::text IS NULL OR seq < (SELECT seq FROM events WHERE internal_id = %(before)s))
    ORDER BY seq DESC LIMIT %(limit)s
) page WHERE bytes_before < %(max_bytes)s ORDER BY seq DESC

-- name: find_public_events
-- Without the internal events: the partial index events_public, in seq order.
SELECT internal_id, id, name, data, "user", ts, v, received_at FROM (
    SELECT internal_id, id, name, data::text AS data, "user"::text AS "user", ts, v, received_at, seq,
           sum(octet_length(data::text)) OVER (ORDER BY seq DESC ROWS UNBOUNDED PRECEDING)
               - octet_length(data::text) AS bytes_before
    FROM events
    WHERE substr(name, 1, 9) <> 'stepline/' AND substr(name, 1, 8) <> 'inngest/'
      AND (%(like)s::text IS NULL OR name LIKE %(like)s)
      AND (%(before)s::text IS NULL OR seq < (SELECT seq FROM events WHERE internal_id = %(before)s))
    ORDER BY seq DESC LIMIT %(limit)s
) page WHERE bytes_before < %(max_bytes)s ORDER BY seq DESC

-- name: runs_of_events
SELECT event_id, id, function_id, status FROM runs WHERE event_id = ANY(%(ids)s::text[]) ORDER BY id

-- name: pause_function
INSERT INTO function_pauses (function_id, paused_at) VALUES (%(function_id)s, %(now)s)
ON CONFLICT (function_id) DO NOTHING

-- name: resume_function
DELETE FROM function_pauses WHERE function_id = %(function_id)s

-- name: paused_functions
SELECT function_id, paused_at FROM function_pauses
