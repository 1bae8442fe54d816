-- Events listed without the internal ones (stepline/*, inngest/*), newest first: the dashboard's and
-- GET /v1/events' default page reads this index instead of stepping over every internal event.
CREATE INDEX events_public ON events (seq) WHERE substr(name, 1, 9) <> 'stepline/' AND substr(name, 1, 8) <> 'inngest/';

-- Paused functions (POST /v1/functions/{id}/pause): their runs are created but not claimed until resumed. Kept
-- apart from the functions table, so an app re-sync (which rewrites its functions) does not un-pause them.
CREATE TABLE function_pauses (
    function_id TEXT PRIMARY KEY,
    paused_at   BIGINT NOT NULL
);
