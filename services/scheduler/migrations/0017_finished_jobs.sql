-- What the retention sweep (retention.rs) needs.

-- It finds the jobs that finished longest ago; without this index each sweep
-- would read every job the farm ever ran.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

-- Deleting a job deletes its tasks, and each deleted task its outputs and
-- its job's idempotency records: without these indexes, one scan of the
-- whole table per deleted row.
CREATE INDEX outputs_task ON outputs (task_id);
CREATE INDEX submit_requests_job ON submit_requests (job_id);

-- The highest farm position among deleted jobs' events. A new leader numbers
-- on from the log's last position; once the newest events belong to deleted
-- jobs (a farm idle for longer than the retention), the log alone would
-- give an older position, and numbers already handed out (to watchers, to
-- the webhook cursor) would be handed out again.
CREATE TABLE farm_seq_floor (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    farm_seq bigint  NOT NULL
);
INSERT INTO farm_seq_floor (id, farm_seq) VALUES (true, 0);
