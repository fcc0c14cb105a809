-- The W3C trace context of each job's submission, handed to its tasks so
-- one trace follows a job from the gateway to the workers.
ALTER TABLE jobs ADD COLUMN trace_context jsonb NOT NULL DEFAULT '{}';
