-- Hardening (docs/security.md). See the SQLite migration of the same number for what each table holds.
CREATE TABLE expression_errors (
    function_id TEXT NOT NULL,
    place       TEXT NOT NULL,
    expression  TEXT NOT NULL,
    message     TEXT NOT NULL,
    count       BIGINT NOT NULL,
    first_at    BIGINT NOT NULL,
    last_at     BIGINT NOT NULL,
    PRIMARY KEY (function_id, place)
);

CREATE TABLE dashboard_sessions (
    sid         TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE login_failures (
    address     TEXT NOT NULL,
    minute      BIGINT NOT NULL,
    count       INTEGER NOT NULL,
    PRIMARY KEY (address, minute)
);
