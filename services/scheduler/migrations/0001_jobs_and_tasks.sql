-- Jobs, their steps and tasks, and the files tasks produced.

CREATE TABLE jobs (
    id                uuid PRIMARY KEY,
    name              text        NOT NULL,
    state             text        NOT NULL,
    priority          integer     NOT NULL CHECK (priority BETWEEN 0 AND 100),
    template_name     text        NOT NULL DEFAULT '',
    template_document text        NOT NULL,
    parameters        jsonb       NOT NULL,
    inputs            jsonb       NOT NULL,
    message           text        NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz
);

CREATE INDEX jobs_created ON jobs (created_at DESC);

CREATE TABLE steps (
    job_id            uuid    NOT NULL REFERENCES jobs ON DELETE CASCADE,
    name              text    NOT NULL,
    position          integer NOT NULL,
    depends_on        text[]  NOT NULL,
    host_requirements jsonb,
    PRIMARY KEY (job_id, name)
);

CREATE TABLE tasks (
    id          uuid PRIMARY KEY,
    job_id      uuid        NOT NULL REFERENCES jobs ON DELETE CASCADE,
    step_name   text        NOT NULL,
    index       integer     NOT NULL,
    state       text        NOT NULL,
    -- How many times the task has been handed out; a worker's report names
    -- the attempt it ran, so reports from superseded attempts are ignored.
    attempt     integer     NOT NULL DEFAULT 0,
    worker_id   text,
    command     text        NOT NULL,
    args        text[]      NOT NULL,
    frames      bigint[]    NOT NULL,
    exit_code   integer,
    message     text        NOT NULL DEFAULT '',
    log_tail    text        NOT NULL DEFAULT '',
    retry_at    timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, step_name, index)
);

-- Dispatch only ever looks at pending tasks; keep that index small.
CREATE INDEX tasks_pending ON tasks (job_id, step_name, index) WHERE state = 'pending';
CREATE INDEX tasks_in_flight ON tasks (worker_id) WHERE state IN ('dispatched', 'running');

CREATE TABLE outputs (
    job_id     uuid        NOT NULL REFERENCES jobs ON DELETE CASCADE,
    path       text        NOT NULL,
    digest     text        NOT NULL,
    size       bigint      NOT NULL,
    task_id    uuid        NOT NULL REFERENCES tasks ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, path)
);
