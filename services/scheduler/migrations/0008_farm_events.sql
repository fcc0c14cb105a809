-- Farm events that belong to no job (a worker joined, left, was lost), in
-- the same farm-wide sequence as job events (`job_events.farm_seq`), so that
-- WatchFarm resumes across both. Pruned after a week by the writer.
CREATE TABLE farm_events (
    farm_seq   bigint      PRIMARY KEY,
    payload    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
