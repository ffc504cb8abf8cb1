-- Gateway config history (SPEC §4): every accepted PUT /api/admin/gateway/config is one row.
-- The newest row is the current config; it is also what the admin API writes to Redis.
--
-- Versions come from a sequence, never from max(version) + 1: a PUT whose transaction fails
-- after Redis already holds its document burns its number, so the next accepted PUT always
-- carries a version the proxies have never seen (they apply a document when its version
-- differs from the applied one).

CREATE SEQUENCE gateway_config_version_seq AS bigint MINVALUE 1 START 1;

CREATE TABLE gateway_config_versions (
    version     bigint PRIMARY KEY,
    -- The validated wire document (GatewayConfigDoc), CIDRs normalised.
    config      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- The admin who made the change; not a foreign key, so history outlives deleted users.
    created_by  text
);
