-- Dashboard sessions: a browser pastes a token once and gets a session
-- cookie (EventSource cannot send an Authorization header). Only the
-- SHA-256 of the cookie's secret is kept; a session acts as its token and
-- ends with it (revocation) or at `expires_at`. `csrf` is the per-session
-- secret every state-changing call made with the cookie must echo.
CREATE TABLE sessions (
    secret_sha256 bytea       PRIMARY KEY,
    token_id      uuid        NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    csrf          text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX sessions_expires_at ON sessions (expires_at);
