-- Retention: ended runs are pruned by age, so find them by ended_at.
CREATE INDEX runs_ended ON runs (ended_at) WHERE ended_at IS NOT NULL;
