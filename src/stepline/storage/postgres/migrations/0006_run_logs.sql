-- Run logs (core/run_logs.py): the Python logging records a run's in-process function code emitted, written in the
-- transaction of the step or run end they precede. At most RUN_LOG_LIMIT lines per run (seq 1..limit); the line at
-- seq limit + 1, when present, counts the records dropped beyond the limit. Pruned with their runs.

CREATE TABLE run_logs (
    run_id   TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    ts       BIGINT NOT NULL,
    level    TEXT NOT NULL,
    logger   TEXT NOT NULL,
    message  TEXT NOT NULL,
    step_id  TEXT,
    PRIMARY KEY (run_id, seq)
);
