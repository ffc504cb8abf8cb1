-- TOTP MFA (RFC 6238) and runs that finish.

-- One TOTP enrollment per user. secret_encrypted is the raw secret sealed with the key derived
-- from WATCHPOST_SECRET_KEY (like email_settings.smtp_pass_encrypted; re-sealed by
-- rotate-secrets). Pending until confirmed_at is set; users.mfa_enrolled mirrors
-- "confirmed_at IS NOT NULL" for search and stats. last_used_step is the 30-second step of
-- the last accepted code: a code is accepted only for a later step (no replay).
CREATE TABLE user_totp (
    user_id          text PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret_encrypted bytea NOT NULL CHECK (octet_length(secret_encrypted) > 12),
    confirmed_at     timestamptz,
    last_used_step   bigint,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- One-time recovery codes, stored as SHA-256 hex of the normalised code (high entropy: no
-- salt or slow hash needed). used_at is set once, by a conditional UPDATE.
CREATE TABLE mfa_recovery_codes (
    user_id    text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash  text NOT NULL,
    used_at    timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, code_hash)
);

-- Runs: status running|succeeded|failed|cancelled (and pending before it starts). The old
-- success status 'completed' becomes 'succeeded'.
ALTER TABLE runs DROP CONSTRAINT runs_status_check;
UPDATE runs SET status = 'succeeded' WHERE status = 'completed';
ALTER TABLE runs ALTER COLUMN status SET DEFAULT 'succeeded';
ALTER TABLE runs ADD CONSTRAINT runs_status_check
    CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled'));
ALTER TABLE runs
    ADD COLUMN output      jsonb,
    ADD COLUMN error       text,
    ADD COLUMN started_at  timestamptz,
    ADD COLUMN finished_at timestamptz,
    ADD COLUMN duration_ms bigint CHECK (duration_ms >= 0),
    -- The `refund` ledger row of a run that ended failed or cancelled; UNIQUE, and set in the
    -- same transaction as the refund under the run's row lock, so a run is refunded once.
    ADD COLUMN refund_transaction_id text UNIQUE REFERENCES credit_transactions (id),
    ADD COLUMN updated_at  timestamptz NOT NULL DEFAULT now();
UPDATE runs SET started_at = created_at WHERE status <> 'pending';
UPDATE runs SET finished_at = created_at, duration_ms = 0
    WHERE status IN ('succeeded', 'failed', 'cancelled');
