-- Owners (for fair share and tenant isolation), job dependencies, and the
-- per-job failure policy.

ALTER TABLE jobs
    ADD COLUMN owner            text      NOT NULL DEFAULT 'anonymous',
    ADD COLUMN depends_on_jobs  uuid[]    NOT NULL DEFAULT '{}',
    ADD COLUMN max_failed_tasks integer   NOT NULL DEFAULT 0 CHECK (max_failed_tasks >= 0),
    ADD COLUMN max_run_seconds  integer   NOT NULL DEFAULT 0 CHECK (max_run_seconds >= 0),
    ADD COLUMN stall_seconds    integer   NOT NULL DEFAULT 0 CHECK (stall_seconds >= 0);

CREATE INDEX jobs_owner_created ON jobs (owner, created_at DESC);

-- A worker that failed too many attempts of one job's tasks.
CREATE TABLE blocklist (
    job_id    uuid    NOT NULL REFERENCES jobs ON DELETE CASCADE,
    worker_id text    NOT NULL,
    failures  integer NOT NULL,
    PRIMARY KEY (job_id, worker_id)
);
