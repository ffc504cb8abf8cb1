//! `/api/admin/email/*`: SMTP settings (password write-only, encrypted at rest) and a test
//! message delivered through them.

use axum::{extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use lettre::message::Mailbox;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    audit,
    auth::PlatformAdmin,
    email::{EmailService, EmailSource, OutgoingEmail, StoredSettings, TlsMode, PASSWORD_PURPOSE},
    error::{ApiError, ErrorEnvelope},
    extract::Json,
    state::AppState,
};

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_status))
        .routes(routes!(get_config, put_config))
        .routes(routes!(send_test))
}

/// Longest accepted SMTP password.
const MAX_PASSWORD_LEN: usize = 1024;

/// `GET /email/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmailStatus {
    pub configured: bool,
    pub source: EmailSource,
}

/// `GET /email/config`: the settings in effect, never the password. Fields are null when
/// `source` is `none`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EmailConfigView {
    pub from: Option<String>,
    pub smtp_host: Option<String>,
    pub smtp_port: Option<u16>,
    pub smtp_user: Option<String>,
    pub smtp_tls_mode: Option<TlsMode>,
    pub has_password: bool,
    pub source: EmailSource,
    /// When the settings were saved through the API (null for `env` and `none`).
    pub updated_at: Option<DateTime<Utc>>,
}

/// `PUT /email/config` body: replaces the saved settings, except the password.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailConfigInput {
    /// Sender: `addr` or `Name <addr>`.
    pub from: String,
    pub smtp_host: String,
    /// 1..=65535; default 25, 587 or 465 after `smtp_tls_mode`.
    pub smtp_port: Option<i64>,
    /// Absent, null or empty: no authentication.
    pub smtp_user: Option<String>,
    /// Write-only. Absent or null: keep the stored password, unless `smtp_host`, `smtp_port`
    /// or `smtp_user` changes, which clears it (a password is never sent to a server other
    /// than the one it was saved for); `""`: clear it; anything else replaces it. A value made
    /// only of `*` or `•` (a masked placeholder) is refused.
    pub smtp_pass: Option<String>,
    /// `none`, `starttls` or `tls`.
    pub smtp_tls_mode: String,
}

/// `POST /email/test` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailTestInput {
    /// Recipient: `addr` or `Name <addr>`.
    pub to: String,
}

/// The audited view of the settings: the password only as `has_password`.
#[derive(Serialize)]
struct AuditedSettings<'a> {
    from: &'a str,
    smtp_host: &'a str,
    smtp_port: u16,
    smtp_user: Option<&'a str>,
    smtp_tls_mode: TlsMode,
    has_password: bool,
}

impl<'a> From<&'a StoredSettings> for AuditedSettings<'a> {
    fn from(s: &'a StoredSettings) -> Self {
        Self {
            from: &s.from,
            smtp_host: &s.smtp_host,
            smtp_port: s.smtp_port,
            smtp_user: s.smtp_user.as_deref(),
            smtp_tls_mode: s.smtp_tls_mode,
            has_password: s.smtp_pass_encrypted.is_some(),
        }
    }
}

/// Whether email is configured, and from where (`db` wins over `env`).
#[utoipa::path(
    get,
    path = "/email/status",
    tag = "email",
    responses(
        (status = 200, body = EmailStatus),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope)
    )
)]
async fn get_status(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
) -> Result<Json<EmailStatus>, ApiError> {
    let conn = state.db().await?;
    let source = EmailService::from_state(&state).source(&conn).await?;
    Ok(Json(EmailStatus {
        configured: source != EmailSource::None,
        source,
    }))
}

/// The SMTP settings in effect; the password is never returned, only `has_password`.
#[utoipa::path(
    get,
    path = "/email/config",
    tag = "email",
    responses(
        (status = 200, body = EmailConfigView),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope)
    )
)]
async fn get_config(
    State(state): State<AppState>,
    _admin: PlatformAdmin,
) -> Result<Json<EmailConfigView>, ApiError> {
    let conn = state.db().await?;
    if let Some(s) = StoredSettings::load(&conn).await? {
        return Ok(Json(EmailConfigView {
            has_password: s.smtp_pass_encrypted.is_some(),
            from: Some(s.from),
            smtp_host: Some(s.smtp_host),
            smtp_port: Some(s.smtp_port),
            smtp_user: s.smtp_user,
            smtp_tls_mode: Some(s.smtp_tls_mode),
            source: EmailSource::Db,
            updated_at: Some(s.updated_at),
        }));
    }
    let service = EmailService::from_state(&state);
    let env = service.env_config();
    Ok(Json(if env.is_configured() {
        EmailConfigView {
            from: Some(env.from.clone()),
            smtp_host: Some(env.host.clone()),
            smtp_port: Some(env.effective_port()),
            smtp_user: (!env.user.is_empty()).then(|| env.user.clone()),
            smtp_tls_mode: Some(env.tls()),
            has_password: !env.pass.is_empty(),
            source: EmailSource::Env,
            updated_at: None,
        }
    } else {
        EmailConfigView {
            from: None,
            smtp_host: None,
            smtp_port: None,
            smtp_user: None,
            smtp_tls_mode: None,
            has_password: false,
            source: EmailSource::None,
            updated_at: None,
        }
    }))
}

/// What a PUT asks for the password.
enum PasswordChange {
    Keep,
    Clear,
    Set(String),
}

/// Saves the SMTP settings (they then win over `WATCHPOST_SMTP_*`); audited as
/// `email.config_updated` with `has_password` before/after, never the password. Changing
/// `smtp_host`, `smtp_port` or `smtp_user` without a new `smtp_pass` clears the stored
/// password. Storing a password needs `WATCHPOST_SECRET_KEY` (422 without it).
#[utoipa::path(
    put,
    path = "/email/config",
    tag = "email",
    request_body = EmailConfigInput,
    responses(
        (status = 204, description = "Saved"),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 422, body = ErrorEnvelope)
    )
)]
async fn put_config(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Json(input): Json<EmailConfigInput>,
) -> Result<StatusCode, ApiError> {
    let from = input.from.trim();
    if from.parse::<Mailbox>().is_err() {
        return Err(ApiError::bad_request(
            "from must be an email address (addr or Name <addr>)",
        ));
    }
    let tls_mode = TlsMode::parse(&input.smtp_tls_mode)
        .ok_or_else(|| ApiError::bad_request("smtp_tls_mode must be none, starttls or tls"))?;
    let host = input.smtp_host.trim();
    if host.is_empty()
        || host.len() > 253
        || host.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::bad_request(
            "smtp_host must be a host name or IP address",
        ));
    }
    let port = match input.smtp_port {
        None => tls_mode.default_port(),
        Some(p) => u16::try_from(p)
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| ApiError::bad_request("smtp_port must be between 1 and 65535"))?,
    };
    let user = input.smtp_user.filter(|u| !u.is_empty());
    if user
        .as_deref()
        .is_some_and(|u| u.len() > 256 || u.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request(
            "smtp_user must be at most 256 characters without control characters",
        ));
    }
    let password = match input.smtp_pass {
        None => PasswordChange::Keep,
        Some(p) if p.is_empty() => PasswordChange::Clear,
        Some(p) if p.chars().all(|c| c == '*' || c == '•') => {
            return Err(ApiError::bad_request(
                "smtp_pass looks like a masked placeholder; omit it (or send null) to keep the stored password",
            ))
        }
        Some(p) if p.len() > MAX_PASSWORD_LEN => {
            return Err(ApiError::bad_request(format!(
                "smtp_pass must be at most {MAX_PASSWORD_LEN} bytes"
            )))
        }
        Some(p) => PasswordChange::Set(p),
    };
    let service = EmailService::from_state(&state);
    let sealed = match &password {
        PasswordChange::Set(p) => {
            let key = service.secret_key().ok_or_else(|| {
                ApiError::unprocessable(
                    "WATCHPOST_SECRET_KEY is not set, so the server cannot store an SMTP password; \
                     set it and restart, or omit smtp_pass",
                )
            })?;
            Some(
                key.encrypt(PASSWORD_PURPOSE, p.as_bytes())
                    .map_err(ApiError::internal)?,
            )
        }
        PasswordChange::Keep | PasswordChange::Clear => None,
    };

    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    let before = StoredSettings::load_for_update(&tx).await?;
    // The stored password belongs to the server and account it was saved for: kept only
    // while both stay the same, so that it can never be steered to another host.
    let same_destination = before.as_ref().is_some_and(|b| {
        b.smtp_host == host && b.smtp_port == port && b.smtp_user.as_deref() == user.as_deref()
    });
    let pass_value: Option<Vec<u8>> = match password {
        PasswordChange::Keep if same_destination => {
            before.as_ref().and_then(|b| b.smtp_pass_encrypted.clone())
        }
        PasswordChange::Keep | PasswordChange::Clear => None,
        PasswordChange::Set(_) => sealed,
    };
    let cleared_by_move = matches!(password, PasswordChange::Keep)
        && !same_destination
        && before
            .as_ref()
            .is_some_and(|b| b.smtp_pass_encrypted.is_some());
    tx.execute(
        "INSERT INTO email_settings (id, from_address, smtp_host, smtp_port, smtp_user, \
           smtp_pass_encrypted, smtp_tls_mode, updated_at, updated_by) \
         VALUES (true, $1, $2, $3, $4, $5, $6, now(), $7) \
         ON CONFLICT (id) DO UPDATE SET from_address = $1, smtp_host = $2, smtp_port = $3, \
           smtp_user = $4, smtp_pass_encrypted = $5, smtp_tls_mode = $6, updated_at = now(), \
           updated_by = $7",
        &[
            &from,
            &host,
            &i32::from(port),
            &user,
            &pass_value,
            &tls_mode.as_str(),
            &admin.id(),
        ],
    )
    .await?;
    let after = StoredSettings::load(&tx)
        .await?
        .ok_or_else(|| ApiError::internal("email_settings row missing after upsert"))?;
    let after_snapshot = audit::snapshot(&AuditedSettings::from(&after))?;
    let mut changes = match &before {
        Some(b) => audit::diff(
            &audit::snapshot(&AuditedSettings::from(b))?,
            &after_snapshot,
        ),
        None => audit::created(&after_snapshot),
    };
    // A new password with has_password already true shows no difference: record that it
    // was replaced, still without the value.
    if let (Some(map), PasswordChange::Set(_)) = (changes.as_object_mut(), &password) {
        map.entry("has_password")
            .or_insert_with(|| json!({"before": true, "after": true, "replaced": true}));
    }
    if let (Some(map), true) = (changes.as_object_mut(), cleared_by_move) {
        map.insert(
            "has_password".into(),
            json!({"before": true, "after": false, "cleared": "smtp_host, smtp_port or smtp_user changed"}),
        );
    }
    audit::record(
        &tx,
        &admin.audit(),
        "email.config_updated",
        "email_settings",
        "email_settings",
        changes,
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sends a test message through the settings in effect: 204 once the SMTP server accepted
/// it, 502 with the server's reply when it refused or could not be reached within the
/// timeout, 409 when email is not configured. Audited as `email.test_sent` or
/// `email.test_failed` with the recipient.
#[utoipa::path(
    post,
    path = "/email/test",
    tag = "email",
    request_body = EmailTestInput,
    responses(
        (status = 204, description = "Accepted by the SMTP server"),
        (status = 400, body = ErrorEnvelope),
        (status = 401, body = ErrorEnvelope),
        (status = 403, body = ErrorEnvelope),
        (status = 409, body = ErrorEnvelope),
        (status = 502, body = ErrorEnvelope)
    )
)]
async fn send_test(
    State(state): State<AppState>,
    admin: PlatformAdmin,
    Json(input): Json<EmailTestInput>,
) -> Result<StatusCode, ApiError> {
    let to = input.to.trim().to_string();
    if to.parse::<Mailbox>().is_err() {
        return Err(ApiError::bad_request(
            "to must be an email address (addr or Name <addr>)",
        ));
    }
    let service = EmailService::from_state(&state);
    // Resolve, then release the connection before talking to the SMTP server.
    let (source, settings) = {
        let conn = state.db().await?;
        service.resolve(&conn).await?
    };
    let outcome = service
        .send_with(
            &settings,
            OutgoingEmail {
                to: to.clone(),
                subject: "Watchpost test email".into(),
                text: format!(
                    "This is a test message from Watchpost, sent by an administrator through \
                     {}:{} to check the email settings.\r\n",
                    settings.host, settings.port
                ),
            },
        )
        .await;
    let (action, mut changes) = match &outcome {
        Ok(()) => (
            "email.test_sent",
            json!({"to": {"before": null, "after": to}}),
        ),
        Err(e) => (
            "email.test_failed",
            json!({"to": {"before": null, "after": to}, "error": {"before": null, "after": e.to_string()}}),
        ),
    };
    if let Some(map) = changes.as_object_mut() {
        map.insert("source".into(), json!({"before": null, "after": source}));
    }
    // Record the attempt either way: a failed one may be an admin probing hosts through it.
    let mut conn = state.db().await?;
    let tx = conn.transaction().await?;
    audit::record(&tx, &admin.audit(), action, "email", "email", changes).await?;
    tx.commit().await?;
    outcome.map_err(ApiError::from)?;
    Ok(StatusCode::NO_CONTENT)
}
