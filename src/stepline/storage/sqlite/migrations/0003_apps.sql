-- Apps the server syncs over HTTP, bulk cancellations from the REST API, and indexes for listing runs.

CREATE TABLE apps (
    url          TEXT PRIMARY KEY,                   -- the app's serve URL
    app_id       TEXT,                               -- appName from its last successful register
    sdk          TEXT,                               -- "py:v0.5.19", "js:v4.24.0"
    framework    TEXT,
    app_version  TEXT,
    checksum     TEXT,                               -- sha256 of the last accepted register body
    synced_at    INTEGER,
    error        TEXT,                               -- last sync error; NULL after a successful sync
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX apps_app_id ON apps (app_id);

CREATE TABLE cancellations (
    id              TEXT PRIMARY KEY,                -- ULID
    app_id          TEXT NOT NULL,
    function_id     TEXT NOT NULL,                   -- "<app_id>-<slug>"
    started_after   INTEGER,                         -- run created_at window, inclusive at both ends
    started_before  INTEGER NOT NULL,
    expression      TEXT,                            -- CEL over `event`
    cancelled       INTEGER NOT NULL,                -- how many live runs it cancelled
    created_at      INTEGER NOT NULL
);
CREATE INDEX cancellations_created ON cancellations (created_at);

-- Run lists are ordered by id (newest first) and paged by id: filter columns lead, id follows, so a filtered page
-- is an index range read with no sort. These replace the (…, created_at) indexes no query ordered by.
DROP INDEX runs_function_created;
DROP INDEX runs_status_created;
CREATE INDEX runs_function_id ON runs (function_id, id);
CREATE INDEX runs_status_id ON runs (status, id);
