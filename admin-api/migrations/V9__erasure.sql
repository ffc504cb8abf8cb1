-- Deleting what has history, and erasure that reaches the audit log.
--
-- A user with history (runs, codes, referrals, ledger rows) is anonymised instead of deleted:
-- status 'deleted', placeholder email and username, everything personal removed. An
-- organization with history is archived instead: enabled = false, archived_at set.
ALTER TABLE users DROP CONSTRAINT users_status_check;
ALTER TABLE users ADD CONSTRAINT users_status_check
    CHECK (status IN ('active', 'disabled', 'deleted'));

ALTER TABLE organizations ADD COLUMN archived_at timestamptz;

-- Crypto-shredding: the personal fields of audit rows (emails, usernames, names, IPs, user
-- agents) are stored sealed (AES-256-GCM) under a random per-user data key. The data key is
-- stored wrapped by the server's WATCHPOST_SECRET_KEY (wrapped = true), or as is when the
-- server has no secret key (wrapped = false; `rotate-secrets` wraps it once a key is set).
-- Erasing a user (hard delete or anonymisation) deletes its key: what was sealed under it can
-- no longer be read, while the audit chain, which hashes the sealed form, still verifies.
-- No foreign key on user_id: keys are created while the audit lock is held, and a foreign-key
-- check would wait on a users row locked by a transaction that waits for that lock. Keys are
-- created only for existing, non-deleted users and deleted with them, both under the audit lock.
CREATE TABLE user_data_keys (
    user_id    text PRIMARY KEY,
    key_sealed bytea NOT NULL,
    wrapped    boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The actor's IP and user agent of an audit row, sealed under the actor's data key (the ip
-- and user_agent columns then stay NULL). NULL on rows written before this migration and on
-- rows without a user actor.
ALTER TABLE audit_log ADD COLUMN sealed_meta jsonb;
