-- Hardening (docs/security.md).
--
-- expression_errors: the last failure of one of a function's expressions at one place (a trigger's `if`, a batch
-- `if`, an idempotency or flow-control key), written in the ingest transaction that met it (at most every few
-- seconds per place and process, `count` adding up the rest). Shown on the function (REST API, dashboard).
CREATE TABLE expression_errors (
    function_id TEXT NOT NULL,
    place       TEXT NOT NULL,
    expression  TEXT NOT NULL,
    message     TEXT NOT NULL,
    count       INTEGER NOT NULL,
    first_at    INTEGER NOT NULL,   -- unix ms
    last_at     INTEGER NOT NULL,
    PRIMARY KEY (function_id, place)
) WITHOUT ROWID;

-- dashboard_sessions: dashboard logins, shared by every node of the cluster. Logging out sets revoked_at, which
-- every node sees at the session's next request, before and after restarts. Expired rows are deleted at login.
CREATE TABLE dashboard_sessions (
    sid         TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
) WITHOUT ROWID;

-- login_failures: failed dashboard logins per peer address and minute, shared by every node (the throttle).
CREATE TABLE login_failures (
    address     TEXT NOT NULL,
    minute      INTEGER NOT NULL,   -- unix ms / 60000
    count       INTEGER NOT NULL,
    PRIMARY KEY (address, minute)
) WITHOUT ROWID;
