-- The dispatch core keeps the queue in the leader's memory and writes task
-- transitions in batches. Postgres no longer searches for pending tasks, so
-- the partial indexes on `state` go: without an index on the columns a
-- transition changes, every task update is a HOT update that page pruning
-- cleans up, and dead tuples stay in check under churn.

DROP INDEX tasks_pending;
DROP INDEX tasks_in_flight;

ALTER TABLE tasks
    -- Failed attempts since the task was created or last reopened by a user;
    -- the retry policy counts these, not `attempt`, which only grows.
    ADD COLUMN failures integer NOT NULL DEFAULT 0;

ALTER TABLE tasks SET (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02,
                       autovacuum_vacuum_insert_scale_factor = 0.05);

ALTER TABLE blocklist
    -- Whether the failures reached the policy's limit and the worker takes none of the job's tasks.
    ADD COLUMN blocked boolean NOT NULL DEFAULT false;

-- The leader loads unfinished jobs at start-up.
CREATE INDEX jobs_unfinished ON jobs (created_at) WHERE finished_at IS NULL;
