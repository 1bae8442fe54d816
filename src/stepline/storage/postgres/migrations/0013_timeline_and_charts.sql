-- The dashboard: the run page's timeline (docs/architecture.md, "Run timeline") and the charts (run_stats).
-- step_attempts: every attempt of a step that was attempted more than once (a step that ran once is its own steps
-- row: started_at is when that attempt started). Written in the transaction that records the attempt's outcome,
-- pruned with the run. status: 'failed' (error set; retry_at when another attempt follows) or 'completed'.
-- runs_parent: the runs a run invoked (step.invoke), listed under its invoke steps.
CREATE TABLE step_attempts (
    run_id      TEXT NOT NULL,
    step_id     TEXT NOT NULL,
    attempt     INTEGER NOT NULL,                    -- from 1
    status      TEXT NOT NULL,
    started_at  BIGINT NOT NULL,                     -- unix ms
    ended_at    BIGINT NOT NULL,
    error       JSONB,                               -- JSON {name, message, stack}
    retry_at    BIGINT,                              -- when the next attempt was due (the end of the backoff)
    PRIMARY KEY (run_id, step_id, attempt)
);

CREATE INDEX runs_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;

-- Run statistics for the dashboard's charts (docs/metrics.md, "Charts"): per function and period (a minute and an
-- hour), the runs started (first claim), ended by status, and two histograms: run duration (first claim to end,
-- d0..d22) and due-to-start lag (l0..l22), in buckets whose upper bounds are storage/sql_stats.py's BOUNDS_MS (the
-- last bucket has no upper bound). Written in the transaction that claims or ends the runs it counts, so counts are
-- exact; a writing process adds to its own shard's row (no contention between nodes), readers sum the shards.
CREATE TABLE run_stats (
    res         INTEGER NOT NULL,                     -- the period: 60000 (a minute) or 3600000 (an hour)
    at          BIGINT  NOT NULL,                      -- the period's start, unix ms (a multiple of res)
    function_id TEXT NOT NULL,
    shard       INTEGER NOT NULL,                     -- the writing process's (0..15)
    started     BIGINT  NOT NULL DEFAULT 0,
    completed   BIGINT  NOT NULL DEFAULT 0,
    failed      BIGINT  NOT NULL DEFAULT 0,
    cancelled   BIGINT  NOT NULL DEFAULT 0,
    d0          BIGINT  NOT NULL DEFAULT 0,
    d1          BIGINT  NOT NULL DEFAULT 0,
    d2          BIGINT  NOT NULL DEFAULT 0,
    d3          BIGINT  NOT NULL DEFAULT 0,
    d4          BIGINT  NOT NULL DEFAULT 0,
    d5          BIGINT  NOT NULL DEFAULT 0,
    d6          BIGINT  NOT NULL DEFAULT 0,
    d7          BIGINT  NOT NULL DEFAULT 0,
    d8          BIGINT  NOT NULL DEFAULT 0,
    d9          BIGINT  NOT NULL DEFAULT 0,
    d10         BIGINT  NOT NULL DEFAULT 0,
    d11         BIGINT  NOT NULL DEFAULT 0,
    d12         BIGINT  NOT NULL DEFAULT 0,
    d13         BIGINT  NOT NULL DEFAULT 0,
    d14         BIGINT  NOT NULL DEFAULT 0,
    d15         BIGINT  NOT NULL DEFAULT 0,
    d16         BIGINT  NOT NULL DEFAULT 0,
    d17         BIGINT  NOT NULL DEFAULT 0,
    d18         BIGINT  NOT NULL DEFAULT 0,
    d19         BIGINT  NOT NULL DEFAULT 0,
    d20         BIGINT  NOT NULL DEFAULT 0,
    d21         BIGINT  NOT NULL DEFAULT 0,
    d22         BIGINT  NOT NULL DEFAULT 0,
    l0          BIGINT  NOT NULL DEFAULT 0,
    l1          BIGINT  NOT NULL DEFAULT 0,
    l2          BIGINT  NOT NULL DEFAULT 0,
    l3          BIGINT  NOT NULL DEFAULT 0,
    l4          BIGINT  NOT NULL DEFAULT 0,
    l5          BIGINT  NOT NULL DEFAULT 0,
    l6          BIGINT  NOT NULL DEFAULT 0,
    l7          BIGINT  NOT NULL DEFAULT 0,
    l8          BIGINT  NOT NULL DEFAULT 0,
    l9          BIGINT  NOT NULL DEFAULT 0,
    l10         BIGINT  NOT NULL DEFAULT 0,
    l11         BIGINT  NOT NULL DEFAULT 0,
    l12         BIGINT  NOT NULL DEFAULT 0,
    l13         BIGINT  NOT NULL DEFAULT 0,
    l14         BIGINT  NOT NULL DEFAULT 0,
    l15         BIGINT  NOT NULL DEFAULT 0,
    l16         BIGINT  NOT NULL DEFAULT 0,
    l17         BIGINT  NOT NULL DEFAULT 0,
    l18         BIGINT  NOT NULL DEFAULT 0,
    l19         BIGINT  NOT NULL DEFAULT 0,
    l20         BIGINT  NOT NULL DEFAULT 0,
    l21         BIGINT  NOT NULL DEFAULT 0,
    l22         BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (res, function_id, at, shard)
);

CREATE INDEX run_stats_at ON run_stats (res, at);
