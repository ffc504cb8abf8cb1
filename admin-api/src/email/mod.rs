//! Outgoing email: where the SMTP settings come from, how the password is kept, and the
//! sender that features (the test message now; invitations and password resets later) reuse.
//!
//! Settings resolve in this order: the row saved through `PUT /api/admin/email/config`
//! (source `db`), else the `[smtp]` section / `WATCHPOST_SMTP_*` variables read once at start
//! (source `env`), else none. Every send opens its own SMTP connection (no pool, so a changed
//! setting applies to the next message) and is wrapped in one overall `tokio` timeout, because
//! lettre's own timeout covers single commands only and not, for example, a server that
//! accepts the connection and never greets.
//!
//! The saved password is encrypted with a key derived from `WATCHPOST_SECRET_KEY` (see
//! [`crypto`]), kept only while host, port and user stay the same, and re-encrypted with a
//! new key by `watchpost-admin rotate-secrets` ([`rotate_secrets`]).

pub mod crypto;
mod rotate;
mod settings;

use std::time::Duration;

use deadpool_postgres::{GenericClient, Pool};
use lettre::{
    message::{header::ContentType, Mailbox},
    transport::smtp::authentication::{Credentials, Mechanism},
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
};

pub use crypto::{CryptoError, SecretKey};
pub use rotate::{rotate_secrets, RotationReport};
pub use settings::{EmailSource, SmtpConfig, StoredSettings, TlsMode};

use crate::{error::ApiError, state::AppState};

/// Associated data binding the encrypted SMTP password to its column.
pub const PASSWORD_PURPOSE: &str = "email_settings.smtp_pass";

/// Everything needed to deliver through one SMTP server, password in clear (memory only).
#[derive(Clone)]
pub struct SmtpSettings {
    /// Envelope and header sender (`Name <addr>` or `addr`).
    pub from: Mailbox,
    pub host: String,
    pub port: u16,
    /// Authenticate (AUTH PLAIN or LOGIN) when set.
    pub user: Option<String>,
    /// Used only with `user`; empty when none is stored.
    pub pass: String,
    pub tls_mode: TlsMode,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("from", &self.from.to_string())
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("has_password", &!self.pass.is_empty())
            .field("tls_mode", &self.tls_mode)
            .finish()
    }
}

/// A plain-text message to one recipient.
#[derive(Debug, Clone)]
pub struct OutgoingEmail {
    /// `addr` or `Name <addr>`.
    pub to: String,
    pub subject: String,
    pub text: String,
}

/// Why a message was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    /// Neither saved settings nor `WATCHPOST_SMTP_*` exist.
    #[error("email is not configured")]
    NotConfigured,
    /// The recipient (or sender) is not a valid address.
    #[error("invalid address {0}")]
    InvalidAddress(String),
    /// A password is stored but cannot be decrypted with the current key.
    #[error(
        "the stored SMTP password cannot be decrypted: WATCHPOST_SECRET_KEY is missing or \
         differs from the key it was saved with (during a rotation, set the old one as \
         WATCHPOST_SECRET_KEY_PREVIOUS); or save the password again"
    )]
    Undecryptable,
    /// The server refused (reply code and text) or could not be reached.
    #[error("SMTP delivery failed: {0}")]
    Smtp(String),
    /// The whole exchange took longer than the configured timeout.
    #[error("SMTP server {0} did not complete the delivery within {1:?}")]
    Timeout(String, Duration),
    /// Reading the saved settings failed.
    #[error(transparent)]
    Store(#[from] ApiError),
}

impl From<EmailError> for ApiError {
    /// Decision: a missing or unusable configuration is 409 (the request is fine, the
    /// server's state does not allow it); SMTP refusals and unreachable servers are 502 with
    /// the server's reply.
    fn from(e: EmailError) -> Self {
        match e {
            EmailError::NotConfigured | EmailError::Undecryptable => {
                ApiError::conflict(e.to_string())
            }
            EmailError::InvalidAddress(_) => ApiError::bad_request(e.to_string()),
            EmailError::Smtp(_) | EmailError::Timeout(..) => ApiError::bad_gateway(e.to_string()),
            EmailError::Store(api) => api,
        }
    }
}

/// The sender. Cheap to build per request: `EmailService::from_state(&state)`.
#[derive(Clone)]
pub struct EmailService {
    pool: Pool,
    env: SmtpConfig,
    key: Option<SecretKey>,
    timeout: Duration,
}

impl EmailService {
    /// A sender over the app's pool and the SMTP settings read at start.
    pub fn from_state(state: &AppState) -> Self {
        let config = state.config();
        Self {
            pool: state.pool().clone(),
            env: config.smtp.clone(),
            key: config.secret_key.clone(),
            timeout: Duration::from_millis(config.smtp.timeout_ms),
        }
    }

    /// The key that encrypts stored secrets, when `WATCHPOST_SECRET_KEY` is set.
    pub fn secret_key(&self) -> Option<&SecretKey> {
        self.key.as_ref()
    }

    /// The settings from `[smtp]` / `WATCHPOST_SMTP_*` (host empty: none).
    pub fn env_config(&self) -> &SmtpConfig {
        &self.env
    }

    /// Where the settings in effect come from.
    pub async fn source(&self, client: &impl GenericClient) -> Result<EmailSource, ApiError> {
        Ok(if StoredSettings::load(client).await?.is_some() {
            EmailSource::Db
        } else if self.env.is_configured() {
            EmailSource::Env
        } else {
            EmailSource::None
        })
    }

    /// The settings in effect, password decrypted.
    pub async fn resolve(
        &self,
        client: &impl GenericClient,
    ) -> Result<(EmailSource, SmtpSettings), EmailError> {
        if let Some(stored) = StoredSettings::load(client).await? {
            let pass = match &stored.smtp_pass_encrypted {
                None => String::new(),
                Some(sealed) => {
                    let key = self.key.as_ref().ok_or(EmailError::Undecryptable)?;
                    let bytes = key
                        .decrypt(PASSWORD_PURPOSE, sealed)
                        .map_err(|_| EmailError::Undecryptable)?;
                    String::from_utf8(bytes).map_err(|_| EmailError::Undecryptable)?
                }
            };
            let from = stored
                .from
                .parse::<Mailbox>()
                .map_err(|_| EmailError::InvalidAddress(stored.from.clone()))?;
            return Ok((
                EmailSource::Db,
                SmtpSettings {
                    from,
                    host: stored.smtp_host,
                    port: stored.smtp_port,
                    user: stored.smtp_user,
                    pass,
                    tls_mode: stored.smtp_tls_mode,
                },
            ));
        }
        match self.env.settings() {
            Some(settings) => Ok((EmailSource::Env, settings)),
            None => Err(EmailError::NotConfigured),
        }
    }

    /// Delivers `msg` through the settings in effect. The database connection is released
    /// before the SMTP exchange starts.
    pub async fn send(&self, msg: OutgoingEmail) -> Result<(), EmailError> {
        let settings = {
            let conn = self.pool.get().await.map_err(ApiError::from)?;
            self.resolve(&conn).await?.1
        };
        self.send_with(&settings, msg).await
    }

    /// Delivers `msg` through `settings`: `Ok` once the server accepted the message.
    pub async fn send_with(
        &self,
        settings: &SmtpSettings,
        msg: OutgoingEmail,
    ) -> Result<(), EmailError> {
        let to = msg
            .to
            .parse::<Mailbox>()
            .map_err(|_| EmailError::InvalidAddress(msg.to.clone()))?;
        let message = Message::builder()
            .from(settings.from.clone())
            .to(to)
            .subject(msg.subject)
            .header(ContentType::TEXT_PLAIN)
            .body(msg.text)
            .map_err(|e| EmailError::Smtp(format!("cannot build the message: {e}")))?;
        let transport = self.transport(settings)?;
        let server = format!("{}:{}", settings.host, settings.port);
        match tokio::time::timeout(self.timeout, transport.send(message)).await {
            Ok(Ok(_response)) => Ok(()),
            Ok(Err(e)) => Err(EmailError::Smtp(format!("{server}: {}", describe(&e)))),
            Err(_) => Err(EmailError::Timeout(server, self.timeout)),
        }
    }

    fn transport(
        &self,
        settings: &SmtpSettings,
    ) -> Result<AsyncSmtpTransport<Tokio1Executor>, EmailError> {
        type Transport = AsyncSmtpTransport<Tokio1Executor>;
        let host = settings.host.as_str();
        let builder = match settings.tls_mode {
            TlsMode::None => Transport::builder_dangerous(host),
            TlsMode::Starttls => Transport::starttls_relay(host)
                .map_err(|e| EmailError::Smtp(format!("TLS set-up for {host}: {e}")))?,
            TlsMode::Tls => Transport::relay(host)
                .map_err(|e| EmailError::Smtp(format!("TLS set-up for {host}: {e}")))?,
        };
        let mut builder = builder.port(settings.port).timeout(Some(self.timeout));
        if let Some(user) = &settings.user {
            builder = builder
                .credentials(Credentials::new(user.clone(), settings.pass.clone()))
                .authentication(vec![Mechanism::Plain, Mechanism::Login]);
        }
        Ok(builder.build())
    }
}

/// lettre's error with its whole source chain: the reply code and the server's text for a
/// refusal, the I/O error for an unreachable server.
fn describe(e: &lettre::transport::smtp::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}
