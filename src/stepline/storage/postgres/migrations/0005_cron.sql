-- Cron schedules (core/scheduler.py): the last scheduled time fired per function and cron expression. Firing is a
-- conditional upsert of last_fire in the transaction that stores the run, so several workers racing the same
-- scheduled time start one run.

CREATE TABLE cron_state (
    function_id  TEXT NOT NULL,
    cron         TEXT NOT NULL,
    last_fire    BIGINT NOT NULL,
    PRIMARY KEY (function_id, cron)
);
