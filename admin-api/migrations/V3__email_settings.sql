-- SMTP settings saved through PUT /api/admin/email/config (SPEC §6, Email). At most one row:
-- when it exists it wins over the WATCHPOST_SMTP_* environment settings.
--
-- The password is never stored in clear: smtp_pass_encrypted is nonce (12 bytes) ||
-- AES-256-GCM ciphertext under a key derived from WATCHPOST_SECRET_KEY. NULL means no password.

CREATE TABLE email_settings (
    id                  boolean PRIMARY KEY DEFAULT true CHECK (id),
    from_address        text NOT NULL,
    smtp_host           text NOT NULL CHECK (smtp_host <> ''),
    smtp_port           integer NOT NULL CHECK (smtp_port BETWEEN 1 AND 65535),
    -- NULL: no authentication.
    smtp_user           text,
    smtp_pass_encrypted bytea CHECK (octet_length(smtp_pass_encrypted) > 12),
    smtp_tls_mode       text NOT NULL CHECK (smtp_tls_mode IN ('none', 'starttls', 'tls')),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    -- The admin who saved them; not a foreign key, so the row outlives deleted users.
    updated_by          text
);
