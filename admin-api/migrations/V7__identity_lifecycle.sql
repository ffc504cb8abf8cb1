-- Identity lifecycle: scoped, expiring API keys; password-reset tokens; when a session was
-- last seen.

-- API keys gain scopes, an optional expiry and the visible start of the key (to tell keys
-- apart in lists; the key itself is never stored). Keys made before scopes existed were
-- whole credentials of their user: a platform admin's keep `admin`, anyone else's get `runs`.
ALTER TABLE api_keys
    ADD COLUMN prefix     text NOT NULL DEFAULT '',
    ADD COLUMN scopes     text[] NOT NULL DEFAULT '{}',
    ADD COLUMN expires_at timestamptz;

UPDATE api_keys k
SET scopes = CASE WHEN u.role = 'platform_admin' THEN ARRAY['admin'] ELSE ARRAY['runs'] END
FROM users u
WHERE u.id = k.user_id;

ALTER TABLE api_keys
    ADD CONSTRAINT api_keys_scopes_known
    CHECK (scopes <@ ARRAY['admin', 'admin:read', 'runs']::text[] AND cardinality(scopes) > 0);

-- Password-reset tokens: only the SHA-256 (hex) of the token is stored; a token is used at
-- most once (used_at) and until expires_at.
CREATE TABLE password_reset_tokens (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    ip         inet
);
CREATE INDEX password_reset_tokens_user_idx ON password_reset_tokens (user_id)
    WHERE used_at IS NULL;

-- Sessions: last request seen, updated at most once a minute.
ALTER TABLE sessions ADD COLUMN last_seen_at timestamptz;
CREATE INDEX sessions_user_created_idx ON sessions (user_id, created_at DESC, id DESC);
