-- The run page's timeline (docs/architecture.md, "Run timeline").
-- step_attempts: every attempt of a step that was attempted more than once (a step that ran once is its own steps
-- row: started_at is when that attempt started). Written in the transaction that records the attempt's outcome,
-- pruned with the run. status: 'failed' (error set; retry_at when another attempt follows) or 'completed'.
-- runs_parent: the runs a run invoked (step.invoke), listed under its invoke steps.
CREATE TABLE step_attempts (
    run_id      TEXT NOT NULL,
    step_id     TEXT NOT NULL,
    attempt     INTEGER NOT NULL,                    -- from 1
    status      TEXT NOT NULL,
    started_at  INTEGER NOT NULL,                    -- unix ms
    ended_at    INTEGER NOT NULL,
    error       TEXT,                                -- JSON {name, message, stack}
    retry_at    INTEGER,                             -- when the next attempt was due (the end of the backoff)
    PRIMARY KEY (run_id, step_id, attempt)
);

CREATE INDEX runs_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
