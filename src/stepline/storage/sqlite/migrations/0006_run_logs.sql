-- Run logs (core/run_logs.py): the Python logging records a run's in-process function code emitted, written in the
-- transaction of the step or run end they precede. At most RUN_LOG_LIMIT lines per run (seq 1..limit); the line at
-- seq limit + 1, when present, counts the records dropped beyond the limit. Pruned with their runs.

CREATE TABLE run_logs (
    run_id   TEXT NOT NULL,
    seq      INTEGER NOT NULL,                       -- order within the run, from 1
    ts       INTEGER NOT NULL,                       -- unix ms (the engine's clock)
    level    TEXT NOT NULL,                          -- DEBUG | INFO | WARNING | ERROR | CRITICAL (or a custom name)
    logger   TEXT NOT NULL,                          -- the logger's name
    message  TEXT NOT NULL,                          -- the formatted message, with any traceback
    step_id  TEXT,                                   -- the run step whose code logged it (sha1); NULL: function body
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
