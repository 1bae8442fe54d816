-- Cron schedules (core/scheduler.py): the last scheduled time fired per function and cron expression. Firing is a
-- conditional upsert of last_fire in the transaction that stores the run, so several workers racing the same
-- scheduled time start one run.

CREATE TABLE cron_state (
    function_id  TEXT NOT NULL,                      -- "<app_id>-<slug>"
    cron         TEXT NOT NULL,                      -- the expression as registered (with any TZ= prefix)
    last_fire    INTEGER NOT NULL,                   -- unix ms of the last scheduled time fired (or skipped)
    PRIMARY KEY (function_id, cron)
);
