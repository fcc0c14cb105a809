-- The event log packed: a batch's events of one job are ONE row (a block,
-- `event_blocks.rs`) instead of one row per event. Per dispatched task the
-- log was 3 inserted rows and 6 index entries, more than half of all rows
-- a batch wrote; a block per job per batch makes it a few rows per batch.
--
-- - `payload`: the events, each a length-delimited `JobEvent` (which
--   carries its own seq and farm_seq), in seq order.
-- - `first_seq`/`last_seq`: a job's blocks do not overlap in seq, so the
--   primary key orders a job's events, and its last seq is `last_seq` of
--   its highest `first_seq`.
-- - `batch_first`: the lowest farm_seq of the batch that wrote the block,
--   the same in all of that batch's blocks. Blocks of one batch overlap in
--   farm_seq (jobs' events interleave), blocks of different batches do not,
--   so farm order is read a whole batch (all blocks of one `batch_first`) at
--   a time. The index leads with it for that; `first_farm_seq` second gives
--   a batch's blocks a stable order (the timeline reads them newest first).
--   No UNIQUE farm_seq index any more: the numbering is the leader's, in
--   memory, and a batch written twice already collides on the primary key.
-- - `created_at`: one per batch, as before (all rows of a transaction had
--   the same now()); webhook bodies carry it.
CREATE TABLE job_event_blocks (
    job_id         uuid        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    first_seq      bigint      NOT NULL,
    last_seq       bigint      NOT NULL,
    batch_first    bigint      NOT NULL,
    first_farm_seq bigint      NOT NULL,
    last_farm_seq  bigint      NOT NULL,
    payload        bytea       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, first_seq),
    CHECK (first_seq <= last_seq AND batch_first <= first_farm_seq
           AND first_farm_seq <= last_farm_seq)
);

-- A protobuf varint, to give each event written so far its length prefix.
CREATE FUNCTION pg_temp.varint(n bigint) RETURNS bytea
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    out bytea := '';
BEGIN
    WHILE n >= 128 LOOP
        out := out || set_byte('\x00'::bytea, 0, ((n & 127) | 128)::int);
        n := n >> 7;
    END LOOP;
    RETURN out || set_byte('\x00'::bytea, 0, n::int);
END
$$;

-- Every event written so far becomes a block of one: its own batch
-- (batch_first = its farm_seq), which keeps blocks of different batches
-- apart in farm_seq as the readers need.
INSERT INTO job_event_blocks
    (job_id, first_seq, last_seq, batch_first, first_farm_seq, last_farm_seq, payload, created_at)
SELECT job_id, seq, seq, farm_seq, farm_seq, farm_seq,
       pg_temp.varint(length(payload)) || payload, created_at
FROM job_events;
DROP FUNCTION pg_temp.varint(bigint);

DROP TABLE job_events;
ALTER TABLE job_event_blocks RENAME TO job_events;
ALTER TABLE job_events RENAME CONSTRAINT job_event_blocks_pkey TO job_events_pkey;
ALTER TABLE job_events RENAME CONSTRAINT job_event_blocks_job_id_fkey TO job_events_job_id_fkey;
CREATE INDEX job_events_by_batch ON job_events (batch_first, first_farm_seq);
