-- Events listed without the internal ones (stepline/*, inngest/*), newest first: the dashboard's and
-- GET /v1/events' default page reads this index instead of stepping over every internal event.
CREATE INDEX events_public ON events (seq) WHERE substr(name, 1, 9) <> 'stepline/' AND substr(name, 1, 8) <> 'inngest/';
