-- Realtime (docs/realtime.md). See the SQLite migration of the same number for what each table holds.
CREATE TABLE realtime_messages (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    origin      TEXT NOT NULL,
    channel     TEXT NOT NULL,
    topic       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX realtime_messages_topic ON realtime_messages (channel, topic, id);
CREATE INDEX realtime_messages_created ON realtime_messages (created_at);

CREATE TABLE realtime_keys (
    name        TEXT PRIMARY KEY,
    secret      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
