-- Realtime (docs/realtime.md).
--
-- realtime_messages: every message published on a channel and topic, kept for a short window (the replay a late
-- subscriber may ask for) and read by the subscribers of other processes: on SQLite by cursor (`id`) when the
-- database changed, on PostgreSQL when a NOTIFY too large to carry the message names its id. `origin` is the
-- publishing process's hub (it delivered its own messages already). `payload` is the message's wire JSON without
-- its id. AUTOINCREMENT: ids are never reused after old rows are pruned, so a cursor stays meaningful.
CREATE TABLE realtime_messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    origin      TEXT NOT NULL,
    channel     TEXT NOT NULL,
    topic       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  INTEGER NOT NULL    -- unix ms
);
CREATE INDEX realtime_messages_topic ON realtime_messages (channel, topic, id);
CREATE INDEX realtime_messages_created ON realtime_messages (created_at);

-- realtime_keys: the secret realtime tokens (JWTs) are signed with, made at first use and shared by every process
-- and node on the database, so a token minted anywhere (the server, a client's helper) is accepted everywhere.
CREATE TABLE realtime_keys (
    name        TEXT PRIMARY KEY,
    secret      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;
