-- The event log's payloads are compressed with lz4 rather than pglz, the
-- default. A busy batch writes a few MB of events, all inside the batch's
-- transaction: pglz spent about 60 ms of a 500 ms batch on them at 10,000
-- workers, lz4 a fraction of that for a similar ratio on these payloads.
-- A server built without lz4 keeps pglz: slower, not wrong.
DO $$
BEGIN
    ALTER TABLE job_events ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'this server has no lz4; the event log stays on pglz';
END
$$;
