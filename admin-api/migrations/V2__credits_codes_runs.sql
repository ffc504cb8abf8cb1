-- Watchpost admin schema, version 2: the credit ledger, idempotency keys, runs, invitation
-- codes, referrals and redemption codes.
--
-- Balances live in organizations.credits_balance (CHECK >= 0) and change only together with a
-- ledger row, in one transaction, through one guarded UPDATE (see src/ledger.rs).

-- The ledger: append-only. `seq` gives the order in which rows of one organization were
-- applied (they are written while holding the organization's row lock), so the latest row's
-- balance_after is the balance.
CREATE TABLE credit_transactions (
    seq              bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    id               text PRIMARY KEY,
    organization_id  text NOT NULL REFERENCES organizations (id),
    credits_amount   bigint NOT NULL CHECK (credits_amount <> 0),
    transaction_type text NOT NULL CHECK (transaction_type IN
                         ('purchase', 'execution', 'sale_earning', 'withdrawal', 'refund', 'adjustment')),
    balance_after    bigint NOT NULL CHECK (balance_after >= 0),
    description      text NOT NULL,
    -- Who caused it; no foreign key: the ledger outlives what it describes.
    actor_id         text,
    -- What it is about: a run id, a redemption code, …
    reference        text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_transactions_created_idx ON credit_transactions (created_at DESC, id DESC);
CREATE INDEX credit_transactions_org_idx
    ON credit_transactions (organization_id, created_at DESC, id DESC);
CREATE INDEX credit_transactions_type_idx
    ON credit_transactions (transaction_type, created_at DESC, id DESC);

CREATE FUNCTION credit_transactions_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'credit_transactions is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER credit_transactions_append_only
    BEFORE UPDATE OR DELETE ON credit_transactions
    FOR EACH ROW EXECUTE FUNCTION credit_transactions_refuse_change();
CREATE TRIGGER credit_transactions_no_truncate
    BEFORE TRUNCATE ON credit_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION credit_transactions_refuse_change();

-- Idempotency-Key of POST /api/admin/credits/adjust, scoped per admin (actor). The row is
-- inserted first in the request's transaction, so a concurrent duplicate waits on it and then
-- replays the stored answer instead of applying the adjustment twice.
CREATE TABLE credit_idempotency_keys (
    actor_id        text NOT NULL,
    idempotency_key text NOT NULL,
    request_hash    text NOT NULL,
    response_status integer,
    response_body   jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (actor_id, idempotency_key)
);

-- Runs and what they cost. A run with a cost has its `execution` ledger row.
CREATE TABLE runs (
    id              text PRIMARY KEY,
    organization_id text NOT NULL REFERENCES organizations (id),
    user_id         text NOT NULL REFERENCES users (id),
    name            text NOT NULL,
    status          text NOT NULL DEFAULT 'completed'
                        CHECK (status IN ('pending', 'running', 'completed', 'failed')),
    credits_cost    bigint NOT NULL CHECK (credits_cost >= 0),
    transaction_id  text REFERENCES credit_transactions (id),
    input           jsonb,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX runs_created_idx ON runs (created_at DESC, id DESC);
CREATE INDEX runs_org_idx ON runs (organization_id, created_at DESC, id DESC);
CREATE INDEX runs_user_idx ON runs (user_id, created_at DESC, id DESC);

-- Invitation codes, owned by users. `code` is stored upper-case and compared upper-case.
CREATE TABLE invitation_codes (
    code       text PRIMARY KEY CHECK (code = upper(code)),
    user_id    text NOT NULL REFERENCES users (id),
    max_uses   integer NOT NULL CHECK (max_uses >= 1),
    uses       integer NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= max_uses),
    is_active  boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invitation_codes_created_idx ON invitation_codes (created_at DESC, code DESC);
CREATE INDEX invitation_codes_user_idx ON invitation_codes (user_id);

-- Who invited whom. One inviter per user (the invitee is the key), never oneself. The invitee
-- is always a user created in the same transaction, so no cycle can form.
CREATE TABLE referrals (
    invitee_user_id text PRIMARY KEY REFERENCES users (id),
    inviter_user_id text NOT NULL REFERENCES users (id),
    code            text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (inviter_user_id <> invitee_user_id)
);
CREATE INDEX referrals_inviter_idx ON referrals (inviter_user_id, created_at DESC, invitee_user_id DESC);
CREATE INDEX referrals_created_idx ON referrals (created_at DESC, invitee_user_id DESC);

-- Redemption codes (Crockford Base32, stored normalised: upper-case, no dashes).
CREATE TABLE redemption_codes (
    code       text PRIMARY KEY CHECK (code = upper(code)),
    batch_id   text NOT NULL,
    code_type  text NOT NULL CHECK (code_type IN ('credits')),
    value      bigint NOT NULL CHECK (value > 0),
    max_uses   integer NOT NULL CHECK (max_uses >= 1),
    uses       integer NOT NULL DEFAULT 0 CHECK (uses >= 0 AND uses <= max_uses),
    is_active  boolean NOT NULL DEFAULT true,
    expires_at timestamptz,
    created_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX redemption_codes_created_idx ON redemption_codes (created_at DESC, code DESC);
CREATE INDEX redemption_codes_batch_idx ON redemption_codes (batch_id, created_at DESC, code DESC);

-- One redemption per (code, user).
CREATE TABLE redemptions (
    code            text NOT NULL REFERENCES redemption_codes (code),
    user_id         text NOT NULL REFERENCES users (id),
    organization_id text NOT NULL REFERENCES organizations (id),
    transaction_id  text NOT NULL REFERENCES credit_transactions (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (code, user_id)
);
