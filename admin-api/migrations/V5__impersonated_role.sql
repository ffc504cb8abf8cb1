-- An impersonation session never acts above the role its target had when it was issued:
-- the role is kept with the session, and a request made with it gets the
-- lesser of that role and the target's current one.
--
-- Impersonating a platform admin has always been refused, so every existing impersonation
-- session was issued for a 'user'.

ALTER TABLE sessions
    ADD COLUMN impersonated_role text CHECK (impersonated_role IN ('user', 'platform_admin'));

UPDATE sessions SET impersonated_role = 'user' WHERE impersonator_id IS NOT NULL;

ALTER TABLE sessions
    ADD CONSTRAINT sessions_impersonated_role_set
    CHECK (impersonator_id IS NULL OR impersonated_role IS NOT NULL);
