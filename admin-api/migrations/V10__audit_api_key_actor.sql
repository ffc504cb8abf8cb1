-- Audit rows name the API key that acted. Until now a mutation made with an API key recorded
-- only the key's user as actor_id, so the audit list could not tell a key from a session.
-- NULL for sessions, the command line and every row written before this column existed
-- (those rows keep verifying: the chain covers this column only when it is set).
ALTER TABLE audit_log ADD COLUMN actor_api_key_id text;
-- `GET /audit-logs?actor_id=key_…` lists what one key did, newest first.
CREATE INDEX audit_log_actor_api_key_idx ON audit_log (actor_api_key_id, created_at DESC, id DESC)
    WHERE actor_api_key_id IS NOT NULL;
