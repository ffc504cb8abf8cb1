//! Authentication and authorization: credentials, passwords, sessions, the per-request
//! principal, the platform-admin guard and the authentication settings.
//!
//! A bearer token is either an API key (`wpk_…`) or a session token (`wps_…`). Only their
//! SHA-256 is stored; a request is authenticated by one indexed query that also checks that
//! the user is active and in no disabled organization, so disabling takes effect on the next
//! request.

pub mod api_keys;
pub mod mfa;
pub mod password;
pub mod principal;
pub mod sessions;
pub mod settings;
pub mod tokens;

pub use api_keys::{create_api_key, ApiKey, IssuedApiKey};
pub use principal::{
    admin_credential_withdrawn, admin_guard, authenticate, reauthenticate, scope_covers,
    CurrentUser, PlatformAdmin, Principal, SCOPES, SCOPE_ADMIN, SCOPE_ADMIN_READ, SCOPE_RUNS,
};
pub use sessions::{issue_session, IssuedSession};
pub use settings::AuthSettings;
