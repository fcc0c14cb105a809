-- Access tokens. Only the SHA-256 of each secret is kept: secrets are 256
-- random bits, so a fast hash is enough (no dictionary to guess from) and a
-- token is found by an index lookup on its hash.
CREATE TABLE tokens (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    role text NOT NULL CHECK (role IN ('viewer', 'submitter', 'admin')),
    secret_sha256 bytea NOT NULL UNIQUE,
    -- Created from the gateway's --bootstrap-admin-token; replaced when that changes.
    bootstrap boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX tokens_created_at ON tokens (created_at DESC);
