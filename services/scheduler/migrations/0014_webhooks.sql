-- Webhooks (webhooks/ in the scheduler). A webhook belongs to an owner and
-- hears about that owner's jobs, or to nobody (owner NULL: farm-wide, made
-- by an admin) and hears about every job. The secret is kept as given out:
-- signing needs it (HMAC), so it cannot be stored hashed.
CREATE TABLE webhooks (
    id             uuid        PRIMARY KEY,
    owner          text,
    created_by     text        NOT NULL,
    url            text        NOT NULL,
    secret         text        NOT NULL,
    -- Event kinds by name (`job.succeeded`, ...).
    events         text[]      NOT NULL,
    paused         boolean     NOT NULL DEFAULT false,
    failure_streak integer     NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_owner ON webhooks (owner);

-- One event for one webhook. The id is derived from (webhook, job, event
-- position), so making the same delivery twice is a no-op (ON CONFLICT) and
-- every attempt of it, by any leader, carries the same `webhook-id`.
CREATE TABLE webhook_deliveries (
    id              text        PRIMARY KEY,
    webhook_id      uuid        NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    job_id          uuid        NOT NULL,
    event           text        NOT NULL,
    body            text        NOT NULL,
    -- pending, delivered, failed
    state           text        NOT NULL DEFAULT 'pending',
    attempts        integer     NOT NULL DEFAULT 0,
    last_status     integer     NOT NULL DEFAULT 0,
    last_error      text        NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- Retries stop after this: NULL for the creation time plus the
    -- leader's --webhook-give-up-seconds, set when a paused webhook resumes.
    give_up_at      timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_hook ON webhook_deliveries (webhook_id, created_at DESC, id);
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at);

-- How far the leader has turned `job_events` into deliveries (a farm_seq).
-- Advanced in the same transaction that inserts the deliveries, so a
-- failover neither loses nor doubles one. Starts at the log's end: events
-- written before webhooks existed are not replayed.
CREATE TABLE webhook_cursor (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    farm_seq bigint  NOT NULL
);
INSERT INTO webhook_cursor (id, farm_seq)
SELECT true, coalesce((SELECT max(farm_seq) FROM job_events), 0);

-- Each job's state as the webhook loop last saw it, so that only changes of
-- state become events (a record repeated for task counts, or a resume from
-- pause, does not).
CREATE TABLE webhook_job_states (
    job_id uuid PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    state  text NOT NULL
);
