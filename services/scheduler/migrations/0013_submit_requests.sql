-- Idempotent submission (SubmitJobRequest.request_id, REST Idempotency-Key):
-- the job each owner's key made, and a fingerprint of the request so a reuse
-- of the key for another request is refused. Written in the job's own
-- transaction, so a key and its job are stored together or not at all, and a
-- new leader sees every key. Keys older than a day are pruned on submission.
CREATE TABLE submit_requests (
    owner TEXT NOT NULL,
    request_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    job_id UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, request_id)
);
CREATE INDEX submit_requests_created_at ON submit_requests (created_at);
