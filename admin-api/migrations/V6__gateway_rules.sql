-- Gateway rules (block / allow / rate_limit / log_only), managed by /api/admin/gateway/rules.
--
-- Rules are versioned with the gateway config: every rule change takes the next value of
-- gateway_config_version_seq and inserts a gateway_config_versions row holding the config
-- document unchanged, so a config PUT and a rule change share one version number. The
-- document published to Redis is the newest config document plus every enabled rule not yet
-- expired; the stored versions keep the rules out (they would grow with every change).

CREATE TABLE gateway_rules (
    id          text PRIMARY KEY,
    -- block, allow, rate_limit or log_only (validated by the API).
    action      text NOT NULL,
    -- RuleMatch: {cidrs, countries, path_prefixes, hosts, methods, ua_types}, normalised.
    match       jsonb NOT NULL,
    -- RuleRate {requests, window_secs} for rate_limit; null otherwise.
    rate        jsonb,
    priority    integer NOT NULL DEFAULT 0,
    enabled     boolean NOT NULL DEFAULT true,
    -- Null: never expires.
    expires_at  timestamptz,
    reason      text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Admins; not foreign keys, so rules and their history outlive deleted users.
    created_by  text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text,
    -- The gateway config version that last changed this rule.
    version     bigint NOT NULL
);

-- The cursor list (newest first) and the published set (enabled, not expired).
CREATE INDEX gateway_rules_created ON gateway_rules (created_at DESC, id DESC);
CREATE INDEX gateway_rules_live ON gateway_rules (priority, id) WHERE enabled;

-- What a version changed: "config updated", "rule rul_… created|updated|deleted"; null for
-- versions stored before this column existed.
ALTER TABLE gateway_config_versions ADD COLUMN change text;
