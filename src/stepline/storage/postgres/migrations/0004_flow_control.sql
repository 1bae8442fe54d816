-- Flow control (core/flow.py). Concurrency: a run holds a slot of each of its keys (ckey1, ckey2) while a worker
-- leases it; a run that found a key full waits with blocked_on set until a slot frees. Throttle and rate limit:
-- GCRA buckets (the theoretical arrival time of the next start). Debounce and batching: the open run per key.

ALTER TABLE runs ADD COLUMN flow JSONB;                        -- {"c": [[key, limit, shown], ...]} (JSON)
ALTER TABLE runs ADD COLUMN ckey1 TEXT;
ALTER TABLE runs ADD COLUMN ckey2 TEXT;
ALTER TABLE runs ADD COLUMN priority_ms BIGINT NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN blocked_on TEXT;
ALTER TABLE runs ADD COLUMN singleton_key TEXT;

CREATE INDEX runs_ckey1_active ON runs (ckey1, lease_expires_at) WHERE lease_owner IS NOT NULL;
CREATE INDEX runs_ckey2_active ON runs (ckey2, lease_expires_at) WHERE lease_owner IS NOT NULL;
CREATE INDEX runs_blocked_on ON runs (blocked_on, (created_at - priority_ms), id) WHERE blocked_on IS NOT NULL;
CREATE INDEX runs_singleton_live ON runs (singleton_key) WHERE singleton_key IS NOT NULL;

CREATE TABLE flow_buckets (
    key  TEXT PRIMARY KEY,    -- "throttle:<function>:<key value>" or "rate:<function>:<key value>"
    tat  BIGINT NOT NULL      -- GCRA theoretical arrival time (unix ms)
);

CREATE TABLE flow_pending (
    key       TEXT PRIMARY KEY,   -- "debounce:<function>:<key value>" or "batch:<function>:<key value>"
    run_id    TEXT NOT NULL,      -- the open run (it takes further events while it has not started)
    first_at  BIGINT NOT NULL,    -- when its first event arrived
    size      INTEGER NOT NULL    -- events in it
);
