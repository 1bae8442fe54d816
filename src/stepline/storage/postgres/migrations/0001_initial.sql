-- Stepline PostgreSQL schema, version 1. Same shape as the SQLite schema; times are unix milliseconds.

CREATE TABLE events (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xact         XID8 NOT NULL DEFAULT pg_current_xact_id(),   -- inserting transaction: waits match events
                                                              -- not visible in the snapshot taken at wait start
    internal_id  TEXT NOT NULL UNIQUE,
    id           TEXT NOT NULL,
    name         TEXT NOT NULL,
    data         JSONB NOT NULL,
    "user"       JSONB NOT NULL,
    ts           BIGINT NOT NULL,
    v            TEXT,
    received_at  BIGINT NOT NULL
);
CREATE INDEX events_name_seq ON events (name, seq);
CREATE INDEX events_received ON events (received_at);

CREATE TABLE functions (
    id          TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL,
    slug        TEXT NOT NULL,
    name        TEXT NOT NULL,
    config      JSONB NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE registry_version (
    singleton  INTEGER PRIMARY KEY CHECK (singleton = 1),
    version    BIGINT NOT NULL
);
INSERT INTO registry_version (singleton, version) VALUES (1, 0);

CREATE TABLE runs (
    id                TEXT PRIMARY KEY,
    function_id       TEXT NOT NULL,
    event_id          TEXT NOT NULL,
    batch             JSONB,
    status            TEXT NOT NULL,
    attempt           INTEGER NOT NULL DEFAULT 0,
    idle_reason       JSONB,
    output            JSONB,
    error             JSONB,
    created_at        BIGINT NOT NULL,
    started_at        BIGINT,
    ended_at          BIGINT,
    start_deadline    BIGINT,
    due_at            BIGINT,
    lease_owner       TEXT,
    lease_expires_at  BIGINT,
    parent_run_id     TEXT,
    parent_step_id    TEXT
);
CREATE INDEX runs_due ON runs (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX runs_function_created ON runs (function_id, created_at);
CREATE INDEX runs_event ON runs (event_id);
CREATE INDEX runs_status_created ON runs (status, created_at);
CREATE INDEX runs_lease_owner ON runs (lease_owner) WHERE lease_owner IS NOT NULL;

CREATE TABLE steps (
    run_id      TEXT NOT NULL,
    step_id     TEXT NOT NULL,
    display_id  TEXT NOT NULL,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    output      JSONB,
    error       JSONB,
    wake_at     BIGINT,
    started_at  BIGINT NOT NULL,
    ended_at    BIGINT,
    seq         INTEGER NOT NULL,
    PRIMARY KEY (run_id, step_id)
);

CREATE TABLE waits (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      TEXT NOT NULL,
    step_id     TEXT,
    kind        TEXT NOT NULL,
    event_name  TEXT NOT NULL,
    expression  TEXT,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX waits_event_name ON waits (event_name);
CREATE INDEX waits_run ON waits (run_id);

CREATE TABLE idempotency (
    function_id  TEXT NOT NULL,
    key          TEXT NOT NULL,
    run_id       TEXT NOT NULL,
    expires_at   BIGINT NOT NULL,
    PRIMARY KEY (function_id, key)
);
