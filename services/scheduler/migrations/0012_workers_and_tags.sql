-- Every worker the farm has seen, with what an admin set on it (tags, and
-- whether it is disabled or draining), so those survive restarts of the
-- scheduler and of the worker; and the tags (pools) a job's tasks need.
-- Rows are upserted by the dispatch core's batches: when a worker joins or
-- leaves, and when an admin acts on it.
CREATE TABLE workers (
    id           text        PRIMARY KEY,
    hostname     text        NOT NULL DEFAULT '',
    -- The encoded WorkerCapabilities it last registered with.
    capabilities bytea       NOT NULL DEFAULT '',
    tags         text[]      NOT NULL DEFAULT '{}',
    admin_state  text        NOT NULL DEFAULT 'enabled'
                             CHECK (admin_state IN ('enabled', 'draining', 'disabled')),
    -- 'online', 'offline' (its session ended) or 'lost' (declared dead).
    connection   text        NOT NULL DEFAULT 'online',
    last_seen    timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE jobs ADD COLUMN tags text[] NOT NULL DEFAULT '{}';
