-- The durable event log watchers resume from. Each event the dispatch core
-- produces gets the next per-job sequence number and the next farm-wide one
-- (both assigned in memory by the single leader, which loads the maxima when
-- it starts leading) and is written in the same transaction as the state
-- change that caused it. Rows live as long as their job.
CREATE TABLE job_events (
    job_id     uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq        bigint      NOT NULL,
    farm_seq   bigint      NOT NULL UNIQUE,
    payload    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, seq)
);

-- What an output is: '' for a task's own files, 'thumbnail' for a frame's
-- preview, 'log' for a finished attempt's log. Only '' outputs feed the
-- steps that depend on a step.
ALTER TABLE outputs ADD COLUMN kind text NOT NULL DEFAULT '';
