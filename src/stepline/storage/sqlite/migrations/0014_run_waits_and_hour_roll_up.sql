-- run_waits: what a run waited for before it started, when that was a gate (docs/architecture.md, "Run timeline"):
-- the kind of its idle_reason when it was first claimed (throttled, debounced, batch, concurrency, rate_limited,
-- singleton, paused), from its creation to that claim. Written in the claiming transaction only for runs that
-- waited on a gate (a run that starts at once, or was only queued, writes nothing); pruned with the run.
CREATE TABLE run_waits (
    run_id      TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    since       INTEGER NOT NULL,                      -- unix ms: the run's creation
    until       INTEGER NOT NULL                       -- unix ms: its first claim (its start)
);

-- run_stats: the hour rows are now rolled up from the minute rows (storage/sql_stats.py) instead of being written with
-- every claim and end. The hour rows of the hours whose minute rows are all still kept are dropped, to be rolled up
-- again from those minutes (the latest one was written partly: the hour had not ended); older hour rows stay.
DELETE FROM run_stats WHERE res = 3600000
    AND at >= (SELECT min(at) - min(at) % 3600000 + 3600000 FROM run_stats WHERE res = 60000);
