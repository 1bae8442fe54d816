-- Realtime messages and run statuses for waiters (SQLite). Loaded by ``SqlRealtimeMixin``.

-- name: insert_realtime_message
INSERT INTO realtime_messages (origin, channel, topic, kind, payload, created_at)
VALUES (:origin, :channel, :topic, :kind, :payload, :created_at)
RETURNING id

-- name: realtime_messages_after
-- Every message after a cursor, oldest first: how another process's subscribers read what this one published.
SELECT id, origin, channel, topic, kind, payload, created_at FROM realtime_messages
WHERE id > :after ORDER BY id LIMIT :limit

-- name: realtime_message
SELECT id, origin, channel, topic, kind, payload, created_at FROM realtime_messages WHERE id = :id

-- name: realtime_replay
-- The newest :limit messages of one channel and topic after a cursor and not older than :since (the replay of a
-- late subscriber), newest first (the caller restores their order).
SELECT id, origin, channel, topic, kind, payload, created_at FROM realtime_messages
WHERE channel = :channel AND topic = :topic AND id > :after AND created_at >= :since
ORDER BY id DESC LIMIT :limit

-- name: realtime_last_id
SELECT coalesce(max(id), 0) FROM realtime_messages

-- name: prune_realtime_messages
DELETE FROM realtime_messages WHERE id IN (
    SELECT id FROM realtime_messages WHERE created_at < :before ORDER BY created_at LIMIT :limit
)

-- name: insert_realtime_key
INSERT INTO realtime_keys (name, secret, created_at) VALUES (:name, :secret, :now)
ON CONFLICT (name) DO NOTHING

-- name: realtime_key
SELECT secret FROM realtime_keys WHERE name = :name

-- name: run_statuses
-- The status of each of these runs (waiters: one query for every waiting request of a process).
SELECT id, status FROM runs WHERE id IN (SELECT value FROM json_each(:ids))
