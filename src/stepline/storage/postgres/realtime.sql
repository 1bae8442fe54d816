-- Realtime messages and run statuses for waiters (PostgreSQL). Loaded by ``SqlRealtimeMixin``.

-- name: insert_realtime_message
INSERT INTO realtime_messages (origin, channel, topic, kind, payload, created_at)
VALUES (%(origin)s, %(channel)s, %(topic)s, %(kind)s, %(payload)s, %(created_at)s)
RETURNING id

-- name: realtime_messages_after
SELECT id, origin, channel, topic, kind, payload, created_at FROM realtime_messages
WHERE id > %(after)s ORDER BY id LIMIT %(limit)s

-- name: realtime_message
SELECT id, origin, channel, topic, kind, payload, created_at FROM realtime_messages WHERE id = %(id)s

-- name: realtime_replay
SELECT id, origin, channel, topic, kind, payload, created_at FROM realtime_messages
WHERE channel = %(channel)s AND topic = %(topic)s AND id > %(after)s AND created_at >= %(since)s
ORDER BY id DESC LIMIT %(limit)s

-- name: realtime_last_id
SELECT coalesce(max(id), 0) FROM realtime_messages

-- name: prune_realtime_messages
DELETE FROM realtime_messages WHERE id IN (
    SELECT id FROM realtime_messages WHERE created_at < %(before)s ORDER BY created_at LIMIT %(limit)s
)

-- name: insert_realtime_key
INSERT INTO realtime_keys (name, secret, created_at) VALUES (%(name)s, %(secret)s, %(now)s)
ON CONFLICT (name) DO NOTHING

-- name: realtime_key
SELECT secret FROM realtime_keys WHERE name = %(name)s

-- name: run_statuses
SELECT id, status FROM runs WHERE id IN (SELECT jsonb_array_elements_text(%(ids)s::jsonb))

-- name: notify_realtime
SELECT pg_notify(%(channel)s, %(payload)s)
