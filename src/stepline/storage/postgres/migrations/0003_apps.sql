-- Apps the server syncs over HTTP, bulk cancellations from the REST API, and indexes for listing runs.

CREATE TABLE apps (
    url          TEXT PRIMARY KEY,
    app_id       TEXT,
    sdk          TEXT,
    framework    TEXT,
    app_version  TEXT,
    checksum     TEXT,
    synced_at    BIGINT,
    error        TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX apps_app_id ON apps (app_id);

CREATE TABLE cancellations (
    id              TEXT PRIMARY KEY,
    app_id          TEXT NOT NULL,
    function_id     TEXT NOT NULL,
    started_after   BIGINT,
    started_before  BIGINT NOT NULL,
    expression      TEXT,
    cancelled       INTEGER NOT NULL,
    created_at      BIGINT NOT NULL
);
CREATE INDEX cancellations_created ON cancellations (created_at);

-- Run lists are ordered by id (newest first) and paged by id: filter columns lead, id follows, so a filtered page
-- is an index range read with no sort. These replace the (..., created_at) indexes no query ordered by.
DROP INDEX runs_function_created;
DROP INDEX runs_status_created;
CREATE INDEX runs_function_id ON runs (function_id, id);
CREATE INDEX runs_status_id ON runs (status, id);
