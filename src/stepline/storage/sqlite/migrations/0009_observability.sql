-- Observability (docs/metrics.md, docs/tracing.md, docs/alerts.md).
-- events.traceparent: the W3C trace context of the send that stored the event (a traced web request, a traced
-- run's send), so the runs it starts continue that trace. NULL when the send was not traced.
-- cluster_leases: one holder per name across every process sharing the database, for a limited time (the leader
-- that exports the cluster-wide gauges, the node that posts failure alerts), with the holder's small state.
-- run_spans: OpenTelemetry spans an app's SDK sent for a run (POST /v1/traces/userland), pruned with the run.

ALTER TABLE events ADD COLUMN traceparent TEXT;

CREATE TABLE cluster_leases (
    name        TEXT PRIMARY KEY,                    -- "metrics", "alerts"
    owner       TEXT NOT NULL,                       -- the holding process (host:pid:suffix)
    expires_at  INTEGER NOT NULL,                    -- unix ms: after this anyone may take it over
    state       TEXT                                 -- the holder's JSON state (alert cursors); kept across holders
);

CREATE TABLE run_spans (
    run_id       TEXT NOT NULL,
    seq          INTEGER NOT NULL,                   -- order received, from 1
    received_at  INTEGER NOT NULL,                   -- unix ms
    span         TEXT NOT NULL,                      -- the span as OTLP JSON (hex ids), with its resource and scope
    PRIMARY KEY (run_id, seq)
);
