-- run_waits: what a run waited for before it started, when that was a gate (docs/architecture.md, "Run timeline"):
-- the kind of its idle_reason when it was first claimed (throttled, debounced, batch, concurrency, rate_limited,
-- singleton, paused), from its creation to that claim. Written in the claiming transaction only for runs that
-- waited on a gate (a run that starts at once, or was only queued, writes nothing); pruned with the run.
CREATE TABLE run_waits (
    run_id      TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    since       BIGINT NOT NULL,                      -- unix ms: the run's creation
    until       BIGINT NOT NULL                       -- unix ms: its first claim (its start)
);
