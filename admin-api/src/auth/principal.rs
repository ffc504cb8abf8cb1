//! Who is calling: bearer-token authentication, the `CurrentUser` / `PlatformAdmin`
//! extractors and the `/api/admin` guard (authentication, role, rate limit).

use std::sync::LazyLock;

use axum::{
    extract::{FromRequestParts, OriginalUri, Request, State},
    http::{header, request::Parts, Method},
    middleware::Next,
    response::{IntoResponse, Response},
};
use deadpool_postgres::GenericClient;

use super::tokens::{hash_token, hashes_equal, TokenKind};
use crate::{
    audit::AuditCtx, error::ApiError, extract::RequestMeta, models::col, models::Role, rate_limit,
    state::AppState,
};

/// The authenticated caller of one request.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: String,
    pub role: Role,
    /// Set when the token is a session token.
    pub session_id: Option<String>,
    /// Set when the token is an API key.
    pub api_key_id: Option<String>,
    /// The API key's scopes (see [`scope_covers`]); None for a session.
    pub scopes: Option<Vec<String>>,
    /// The admin who obtained this (impersonation) session.
    pub impersonator_id: Option<String>,
    /// `mfa_required` is on and this session's user has not enrolled in MFA: only
    /// [`MFA_ENROLLMENT_PATHS`] answer (never set for API keys or impersonation sessions).
    pub mfa_enrollment_pending: bool,
    /// Peer address, user agent, request id.
    pub meta: RequestMeta,
}

impl Principal {
    /// Audit context for mutations made by this caller.
    pub fn audit(&self) -> AuditCtx {
        AuditCtx::new(&self.user_id, self.impersonator_id.as_deref(), &self.meta)
            .with_api_key(self.api_key_id.as_deref())
    }

    /// Whether the caller is a platform admin.
    pub fn is_platform_admin(&self) -> bool {
        self.role == Role::PlatformAdmin
    }
}

/// A session row with everything [`check_row`] needs; completed by the condition on `s`.
/// An impersonation session stays valid only while its admin is an active platform admin.
const SESSION_SELECT: &str = "\
SELECT s.id AS credential_id, s.token_hash AS hash, s.user_id, s.impersonator_id, \
       s.impersonated_role, u.role, u.status, NULL::text[] AS scopes, \
       (u.last_active_at IS NULL OR u.last_active_at < now() - interval '1 minute' \
        OR s.last_seen_at IS NULL OR s.last_seen_at < now() - interval '1 minute') AS stale, \
       EXISTS (SELECT 1 FROM memberships m JOIN organizations o ON o.id = m.organization_id \
               WHERE m.user_id = u.id AND NOT o.enabled) AS org_disabled, \
       (s.impersonator_id IS NULL \
        OR (imp.status = 'active' AND imp.role = 'platform_admin')) AS impersonator_ok, \
       (s.impersonator_id IS NULL AND NOT u.mfa_enrolled \
        AND (SELECT mfa_required FROM auth_config WHERE id)) AS mfa_enrollment_pending \
FROM sessions s \
JOIN users u ON u.id = s.user_id \
LEFT JOIN users imp ON imp.id = s.impersonator_id \
WHERE s.revoked_at IS NULL AND s.expires_at > now() AND ";

/// An API key row, like [`SESSION_SELECT`]; completed by the condition on `k`.
const API_KEY_SELECT: &str = "\
SELECT k.id AS credential_id, k.key_hash AS hash, k.user_id, NULL::text AS impersonator_id, \
       NULL::text AS impersonated_role, u.role, u.status, k.scopes, \
       (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute') AS stale, \
       EXISTS (SELECT 1 FROM memberships m JOIN organizations o ON o.id = m.organization_id \
               WHERE m.user_id = u.id AND NOT o.enabled) AS org_disabled, \
       true AS impersonator_ok, false AS mfa_enrollment_pending \
FROM api_keys k JOIN users u ON u.id = k.user_id \
WHERE k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now()) AND ";

/// Lookups by presented token (each request) and by credential id (re-checks of long
/// responses such as the access-log tail).
static SESSION_BY_HASH: LazyLock<String> =
    LazyLock::new(|| format!("{SESSION_SELECT}s.token_hash = $1"));
static SESSION_BY_ID: LazyLock<String> = LazyLock::new(|| format!("{SESSION_SELECT}s.id = $1"));
static API_KEY_BY_HASH: LazyLock<String> =
    LazyLock::new(|| format!("{API_KEY_SELECT}k.key_hash = $1"));
static API_KEY_BY_ID: LazyLock<String> = LazyLock::new(|| format!("{API_KEY_SELECT}k.id = $1"));

/// Order of roles, for "never above": an exhaustive match, so a new role must be placed.
fn rank(role: Role) -> u8 {
    match role {
        Role::User => 0,
        Role::PlatformAdmin => 1,
    }
}

/// What a credential row grants.
struct Checked {
    user_id: String,
    role: Role,
    credential_id: String,
    impersonator_id: Option<String>,
    scopes: Option<Vec<String>>,
    stale: bool,
    mfa_enrollment_pending: bool,
}

/// Applies the rules to a row of [`SESSION_SELECT`] / [`API_KEY_SELECT`]: 401 when the user
/// is disabled, in a disabled organization, or impersonated by someone who is no longer an
/// active platform admin. An impersonation session gets the lesser of the user's role now and
/// the role at issue time.
fn check_row(row: &tokio_postgres::Row) -> Result<Checked, ApiError> {
    let status: String = col(row, "status")?;
    let org_disabled: bool = col(row, "org_disabled")?;
    let impersonator_ok: bool = col(row, "impersonator_ok")?;
    if status != "active" {
        return Err(ApiError::unauthorized("account is disabled"));
    }
    if org_disabled {
        return Err(ApiError::unauthorized("organization is disabled"));
    }
    if !impersonator_ok {
        return Err(ApiError::unauthorized("invalid or expired token"));
    }
    let parse = |text: String| {
        Role::parse(&text).ok_or_else(|| ApiError::internal(format!("unknown role {text}")))
    };
    let mut role = parse(col(row, "role")?)?;
    let impersonator_id: Option<String> = col(row, "impersonator_id")?;
    if impersonator_id.is_some() {
        // The column is set for every impersonation session; without it, the least role.
        let issued = match col::<Option<String>>(row, "impersonated_role")? {
            Some(text) => parse(text)?,
            None => Role::User,
        };
        if rank(issued) < rank(role) {
            role = issued;
        }
    }
    Ok(Checked {
        user_id: col(row, "user_id")?,
        role,
        credential_id: col(row, "credential_id")?,
        impersonator_id,
        scopes: col(row, "scopes")?,
        stale: col(row, "stale")?,
        mfa_enrollment_pending: col(row, "mfa_enrollment_pending")?,
    })
}

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("malformed Authorization header"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("malformed Authorization header"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::unauthorized("expected a Bearer token"));
    }
    Ok(token.trim())
}

/// Authenticates the request's bearer token: 401 when missing, unknown, revoked, expired, or
/// when the user is disabled or belongs to a disabled organization; 503 when PostgreSQL is
/// down. One indexed query per request.
pub async fn authenticate(state: &AppState, parts: &Parts) -> Result<Principal, ApiError> {
    let token = bearer(parts)?;
    let invalid = || ApiError::unauthorized("invalid or expired token");
    let kind = TokenKind::of(token).ok_or_else(invalid)?;
    let hash = hash_token(token);
    let conn = state.db().await?;
    let query = match kind {
        TokenKind::ApiKey => API_KEY_BY_HASH.as_str(),
        TokenKind::Session => SESSION_BY_HASH.as_str(),
    };
    let row = conn.query_opt(query, &[&hash]).await?.ok_or_else(invalid)?;
    let stored: String = col(&row, "hash")?;
    if !hashes_equal(&stored, &hash) {
        return Err(invalid());
    }
    let checked = check_row(&row)?;
    if let Some(scopes) = &checked.scopes {
        let path = parts
            .extensions
            .get::<OriginalUri>()
            .map_or_else(|| parts.uri.path(), |u| u.0.path());
        if !scope_covers(scopes, &parts.method, path) {
            return Err(ApiError::forbidden(
                "this API key's scopes do not cover this route",
            ));
        }
    }
    if checked.mfa_enrollment_pending && !mfa_enrollment_path(parts) {
        return Err(ApiError::mfa_enrollment_required(
            "multi-factor authentication is required: enroll through POST /api/me/mfa/totp \
             and POST /api/me/mfa/totp/confirm first",
        ));
    }
    if checked.stale {
        touch(state, kind, &checked.user_id, &checked.credential_id);
    }
    let (session_id, api_key_id) = match kind {
        TokenKind::Session => (Some(checked.credential_id), None),
        TokenKind::ApiKey => (None, Some(checked.credential_id)),
    };
    Ok(Principal {
        user_id: checked.user_id,
        role: checked.role,
        session_id,
        api_key_id,
        scopes: checked.scopes,
        impersonator_id: checked.impersonator_id,
        mfa_enrollment_pending: checked.mfa_enrollment_pending,
        meta: RequestMeta::from_parts(parts),
    })
}

/// What a session of a user who must still enroll in MFA reaches: `GET /api/me`, everything
/// under `/api/me/mfa/`, and signing out.
pub const MFA_ENROLLMENT_PATHS: [&str; 3] =
    ["/api/me", "/api/me/mfa/*", "/api/auth/sessions/current"];

/// Whether the request's path (as the client sent it, before any nesting) is one of
/// [`MFA_ENROLLMENT_PATHS`].
fn mfa_enrollment_path(parts: &Parts) -> bool {
    let path = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map_or_else(|| parts.uri.path(), |u| u.0.path());
    MFA_ENROLLMENT_PATHS
        .iter()
        .any(|allowed| match allowed.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix) && !path[prefix.len()..].contains(".."),
            None => path == *allowed,
        })
}

/// Checks again, by credential id, that an earlier authentication still holds: the same rules
/// as [`authenticate`] (401 once the credential is revoked, deleted or expired, or the user
/// or an impersonating admin is disabled), with the role as it is now. For responses that
/// outlive their request, such as the access-log tail. One indexed query.
pub async fn reauthenticate(
    state: &AppState,
    principal: &Principal,
) -> Result<Principal, ApiError> {
    let (query, id) = match (&principal.session_id, &principal.api_key_id) {
        (Some(id), _) => (SESSION_BY_ID.as_str(), id),
        (None, Some(id)) => (API_KEY_BY_ID.as_str(), id),
        (None, None) => return Err(ApiError::unauthorized("invalid or expired token")),
    };
    let conn = state.db().await?;
    let row = conn
        .query_opt(query, &[id])
        .await?
        .ok_or_else(|| ApiError::unauthorized("the credential was revoked or has expired"))?;
    let checked = check_row(&row)?;
    if checked.user_id != principal.user_id {
        return Err(ApiError::unauthorized("invalid or expired token"));
    }
    Ok(Principal {
        role: checked.role,
        impersonator_id: checked.impersonator_id,
        mfa_enrollment_pending: checked.mfa_enrollment_pending,
        ..principal.clone()
    })
}

/// Resolves once `principal`'s credential no longer grants a platform admin's access,
/// checking it again with [`reauthenticate`] every `every` (the first check one interval from
/// now: the request was authenticated just now). The answer is the error to report:
/// `UNAUTHORIZED` once the credential is revoked, deleted or expired or the user (or an
/// impersonating admin) is disabled, `FORBIDDEN` once the user is no longer a platform admin.
/// While PostgreSQL is unreachable it keeps waiting (nothing can be revoked meanwhile) and the
/// next check that reaches it decides. For responses that outlive their request: the
/// access-log tail and exports.
pub async fn admin_credential_withdrawn(
    state: &AppState,
    principal: &Principal,
    every: std::time::Duration,
) -> ApiError {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate.
    ticks.tick().await;
    let withdrawn = loop {
        ticks.tick().await;
        match reauthenticate(state, principal).await {
            Ok(p) => match require_admin(&p) {
                Ok(()) => continue,
                Err(e) => break e,
            },
            Err(e) if e.code() == crate::error::ErrorCode::Unauthorized => break e,
            Err(e) => {
                tracing::debug!(error = %e, "cannot re-check a credential now");
            }
        }
    };
    tracing::info!(
        user_id = %principal.user_id,
        code = ?withdrawn.code(),
        "credential withdrawn: ending a long response"
    );
    withdrawn
}

/// The API-key scopes.
pub const SCOPES: [&str; 3] = [SCOPE_ADMIN, SCOPE_ADMIN_READ, SCOPE_RUNS];
/// Every `/api/admin` route (and `GET /metrics`); only for platform admins.
pub const SCOPE_ADMIN: &str = "admin";
/// The `GET`s of `/api/admin` (and `GET /metrics`); only for platform admins.
pub const SCOPE_ADMIN_READ: &str = "admin:read";
/// The user-facing `/api/runs` routes, acting as the key's user.
pub const SCOPE_RUNS: &str = "runs";

/// Whether an API key with `scopes` may call `method path` (the full path, before any
/// nesting). `GET /api/me` answers every key (who the key acts for); any other route that
/// no scope names (sign-out, password changes, `/api/me/…`, `/api/redeem`) answers 403 to a
/// key: those need a session.
pub fn scope_covers(scopes: &[String], method: &Method, path: &str) -> bool {
    let has = |scope: &str| scopes.iter().any(|s| s == scope);
    let read = method == Method::GET || method == Method::HEAD;
    let under = |base: &str| {
        path == base
            || path
                .strip_prefix(base)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    if under(crate::routes::ADMIN_BASE) || path == "/metrics" {
        has(SCOPE_ADMIN) || (read && has(SCOPE_ADMIN_READ))
    } else if under("/api/runs") {
        has(SCOPE_RUNS)
    } else {
        path == "/api/me" && read
    }
}

/// Updates `last_active_at` (and an API key's `last_used_at`, a session's `last_seen_at`) at
/// most once a minute, in the background: activity tracking must not slow requests or fail
/// them.
fn touch(state: &AppState, kind: TokenKind, user_id: &str, credential_id: &str) {
    let pool = state.pool().clone();
    let (user_id, credential_id) = (user_id.to_string(), credential_id.to_string());
    tokio::spawn(async move {
        let result = async {
            let conn = pool.get().await.map_err(|e| e.to_string())?;
            conn.execute(
                "UPDATE users SET last_active_at = now() WHERE id = $1 AND \
                 (last_active_at IS NULL OR last_active_at < now() - interval '1 minute')",
                &[&user_id],
            )
            .await
            .map_err(|e| e.to_string())?;
            let credential = match kind {
                TokenKind::ApiKey => {
                    "UPDATE api_keys SET last_used_at = now() WHERE id = $1 AND \
                     (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')"
                }
                TokenKind::Session => {
                    "UPDATE sessions SET last_seen_at = now() WHERE id = $1 AND \
                     (last_seen_at IS NULL OR last_seen_at < now() - interval '1 minute')"
                }
            };
            conn.execute(credential, &[&credential_id])
                .await
                .map_err(|e| e.to_string())?;
            Ok::<(), String>(())
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(user_id, error = %e, "could not record activity");
        }
    });
}

/// Extractor: any authenticated user (401 otherwise).
#[derive(Debug, Clone)]
pub struct CurrentUser(pub Principal);

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(p) = parts.extensions.get::<Principal>() {
            return Ok(Self(p.clone()));
        }
        Ok(Self(authenticate(state, parts).await?))
    }
}

/// Extractor: an authenticated platform admin (401 / 403 otherwise). Under `/api/admin` the
/// [`admin_guard`] has already authenticated and rate-limited the caller; this just reads its
/// result.
#[derive(Debug, Clone)]
pub struct PlatformAdmin(pub Principal);

impl PlatformAdmin {
    /// Audit context for mutations made by this admin.
    pub fn audit(&self) -> AuditCtx {
        self.0.audit()
    }

    /// The admin's user id.
    pub fn id(&self) -> &str {
        &self.0.user_id
    }
}

impl FromRequestParts<AppState> for PlatformAdmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let principal = match parts.extensions.get::<Principal>() {
            Some(p) => p.clone(),
            None => authenticate(state, parts).await?,
        };
        require_admin(&principal)?;
        Ok(Self(principal))
    }
}

pub fn require_admin(principal: &Principal) -> Result<(), ApiError> {
    if principal.is_platform_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden("platform_admin role required"))
    }
}

/// Middleware on every `/api/admin` route: authenticate (401), require `platform_admin` (403),
/// count the request against the admin's rate limits (429), and add the `RateLimit-*`
/// headers to the response.
pub async fn admin_guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let principal = match authenticate(&state, &parts).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = require_admin(&principal) {
        return e.into_response();
    }
    let decision = rate_limit::check(&state, &principal.user_id).await;
    if let Some(d) = decision.filter(|d| !d.allowed) {
        state.metrics().throttled(crate::rate_limit::ADMIN_THROTTLE);
        let mut response = d.error().into_response();
        d.apply_headers(response.headers_mut());
        return response;
    }
    parts.extensions.insert(principal);
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if let Some(d) = decision {
        d.apply_headers(response.headers_mut());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers(scopes: &[&str], method: Method, path: &str) -> bool {
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_string()).collect();
        scope_covers(&scopes, &method, path)
    }

    #[test]
    fn admin_scopes_cover_the_admin_api() {
        assert!(covers(&["admin"], Method::POST, "/api/admin/users"));
        assert!(covers(
            &["admin"],
            Method::GET,
            "/api/admin/access-log/tail"
        ));
        assert!(covers(&["admin:read"], Method::GET, "/api/admin/users"));
        assert!(covers(&["admin:read"], Method::GET, "/metrics"));
        assert!(!covers(
            &["admin:read"],
            Method::DELETE,
            "/api/admin/api-keys/x"
        ));
        assert!(!covers(
            &["admin:read"],
            Method::POST,
            "/api/admin/users/search"
        ));
        assert!(!covers(&["runs"], Method::GET, "/api/admin/runs"));
        assert!(!covers(&["admin"], Method::POST, "/api/runs"));
        // A look-alike prefix is not the admin API.
        assert!(!covers(&["admin"], Method::GET, "/api/administrator"));
    }

    #[test]
    fn the_runs_scope_covers_api_runs_only() {
        assert!(covers(&["runs"], Method::POST, "/api/runs"));
        assert!(covers(&["runs"], Method::PATCH, "/api/runs/run_1"));
        assert!(!covers(&["runs"], Method::POST, "/api/runsx"));
        assert!(!covers(&["runs"], Method::POST, "/api/redeem"));
        assert!(!covers(&["runs"], Method::POST, "/api/me/invitation-codes"));
    }

    #[test]
    fn every_key_may_ask_who_it_is_and_nothing_else_outside_its_scopes() {
        for scopes in [&["admin"][..], &["admin:read"], &["runs"]] {
            assert!(covers(scopes, Method::GET, "/api/me"));
            assert!(!covers(scopes, Method::GET, "/api/me/sessions"));
            assert!(!covers(
                scopes,
                Method::DELETE,
                "/api/auth/sessions/current"
            ));
            assert!(!covers(scopes, Method::POST, "/api/auth/password"));
        }
    }
}
