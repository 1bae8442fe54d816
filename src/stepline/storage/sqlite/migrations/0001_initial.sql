-- Stepline SQLite schema, version 1.
-- Times are integer unix milliseconds (UTC). JSON columns hold JSON text.

CREATE TABLE events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,  -- commit order; waits only match events after their seq
    internal_id  TEXT NOT NULL UNIQUE,               -- ULID assigned by Stepline
    id           TEXT NOT NULL,                      -- user idempotency id (defaults to internal_id)
    name         TEXT NOT NULL,
    data         TEXT NOT NULL,
    user         TEXT NOT NULL,
    ts           INTEGER NOT NULL,
    v            TEXT,
    received_at  INTEGER NOT NULL
);
CREATE INDEX events_name_seq ON events (name, seq);
CREATE INDEX events_received ON events (received_at);

CREATE TABLE functions (
    id          TEXT PRIMARY KEY,                    -- "<app_id>-<slug>"
    app_id      TEXT NOT NULL,
    slug        TEXT NOT NULL,
    name        TEXT NOT NULL,
    config      TEXT NOT NULL,                       -- JSON: triggers, retries, cancel, timeouts, ...
    updated_at  INTEGER NOT NULL
);

-- Bumped on every function registration so processes can cache the registry cheaply.
CREATE TABLE registry_version (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    version    INTEGER NOT NULL
);
INSERT INTO registry_version (singleton, version) VALUES (1, 0);

CREATE TABLE runs (
    id                TEXT PRIMARY KEY,              -- ULID
    function_id       TEXT NOT NULL,
    event_id          TEXT NOT NULL,                 -- internal_id of the triggering event
    batch             TEXT,                          -- JSON list of internal event ids, when more than one
    status            TEXT NOT NULL,                 -- queued | running | completed | failed | cancelled
    attempt           INTEGER NOT NULL DEFAULT 0,    -- function-level attempt (errors outside steps)
    idle_reason       TEXT,                          -- JSON: why a running run has no work due
    output            TEXT,
    error             TEXT,
    created_at        INTEGER NOT NULL,
    started_at        INTEGER,
    ended_at          INTEGER,
    start_deadline    INTEGER,                       -- timeouts.start
    due_at            INTEGER,                       -- when the run next has work; NULL when none
    lease_owner       TEXT,
    lease_expires_at  INTEGER,
    parent_run_id     TEXT,                          -- set for runs started by step.invoke
    parent_step_id    TEXT
);
CREATE INDEX runs_due ON runs (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX runs_function_created ON runs (function_id, created_at);
CREATE INDEX runs_event ON runs (event_id);
CREATE INDEX runs_status_created ON runs (status, created_at);
CREATE INDEX runs_lease_owner ON runs (lease_owner) WHERE lease_owner IS NOT NULL;

-- One row per (run, step): the memo once status is completed or failed, the pending state before.
CREATE TABLE steps (
    run_id      TEXT NOT NULL,
    step_id     TEXT NOT NULL,                       -- sha1 of display_id
    display_id  TEXT NOT NULL,                       -- the user's id, "x" or "x:N"
    kind        TEXT NOT NULL,                       -- run | sleep | wait_for_event | invoke | send_event
    status      TEXT NOT NULL,                       -- completed | failed | retrying | sleeping | waiting | invoking
    attempts    INTEGER NOT NULL DEFAULT 0,
    output      TEXT,
    error       TEXT,
    wake_at     INTEGER,                             -- pending steps: retry time, sleep end, wait timeout
    started_at  INTEGER NOT NULL,
    ended_at    INTEGER,
    seq         INTEGER NOT NULL,                    -- order in which steps were first recorded
    PRIMARY KEY (run_id, step_id)
) WITHOUT ROWID;

-- Waits matched against incoming events: step.wait_for_event and cancel_on.
CREATE TABLE waits (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT NOT NULL,
    step_id     TEXT,                                -- NULL for cancellation waits
    kind        TEXT NOT NULL,                       -- event | cancel
    event_name  TEXT NOT NULL,
    expression  TEXT,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX waits_event_name ON waits (event_name);
CREATE INDEX waits_run ON waits (run_id);

-- Idempotency keys per function, held for 24 hours (event ids and idempotency expressions).
CREATE TABLE idempotency (
    function_id  TEXT NOT NULL,
    key          TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    expires_at   INTEGER NOT NULL,
    PRIMARY KEY (function_id, key)
) WITHOUT ROWID;
