-- The retention sweep (retention.rs) finds jobs that finished longest ago;
-- without this index each sweep would read every job the farm ever ran.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
