//! The two places SMTP settings come from: the `[smtp]` config section (with its
//! `WATCHPOST_SMTP_*` variables) and the `email_settings` row.

use std::fmt;

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use lettre::message::Mailbox;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::SmtpSettings;
use crate::{error::ApiError, models::col};

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain text, no STARTTLS (local relays and tests only).
    None,
    /// Plain connect, then STARTTLS is required (usually port 587).
    Starttls,
    /// TLS from the first byte, "implicit TLS" (usually port 465).
    Tls,
}

impl TlsMode {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Starttls => "starttls",
            Self::Tls => "tls",
        }
    }

    /// `none`, `starttls` or `tls`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "none" => Some(Self::None),
            "starttls" => Some(Self::Starttls),
            "tls" => Some(Self::Tls),
            _ => None,
        }
    }

    /// The port used when none is given: 25, 587 or 465.
    pub fn default_port(self) -> u16 {
        match self {
            Self::None => 25,
            Self::Starttls => 587,
            Self::Tls => 465,
        }
    }
}

/// Where the settings in effect come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EmailSource {
    /// Saved through `PUT /api/admin/email/config`.
    Db,
    /// `[smtp]` / `WATCHPOST_SMTP_*`.
    Env,
    /// Not configured.
    None,
}

/// Environment variables read once at start (they override `[smtp]` in the file).
pub const ENV_VARS: &[(&str, &str)] = &[
    ("WATCHPOST_SMTP_HOST", "host"),
    ("WATCHPOST_SMTP_PORT", "port"),
    ("WATCHPOST_SMTP_USER", "user"),
    ("WATCHPOST_SMTP_PASS", "pass"),
    ("WATCHPOST_SMTP_FROM", "from"),
    ("WATCHPOST_SMTP_TLS_MODE", "tls_mode"),
    ("WATCHPOST_SMTP_TIMEOUT_MS", "timeout_ms"),
];

/// `[smtp]`: the fallback SMTP server, used while no settings were saved through the API.
/// Email is configured from here when `host` is non-empty.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// Empty: not configured.
    pub host: String,
    /// Default: 25, 587 or 465 after `tls_mode`.
    pub port: Option<u16>,
    /// Empty: no authentication.
    pub user: String,
    pub pass: String,
    /// Sender address, required with `host`.
    pub from: String,
    /// `none`, `starttls` (default) or `tls`.
    pub tls_mode: String,
    /// Overall limit of one delivery (connect to QUIT), both sources. Default 10 000 ms.
    pub timeout_ms: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: None,
            user: String::new(),
            pass: String::new(),
            from: String::new(),
            tls_mode: "starttls".into(),
            timeout_ms: 10_000,
        }
    }
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("has_password", &!self.pass.is_empty())
            .field("from", &self.from)
            .field("tls_mode", &self.tls_mode)
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

impl SmtpConfig {
    /// Applies `WATCHPOST_SMTP_*` from `env`, taking each value verbatim (the generic loader
    /// would read a numeric password as a number).
    pub fn apply_env(&mut self, env: &[(String, String)]) -> Result<(), String> {
        for (var, value) in env {
            let Some((_, key)) = ENV_VARS.iter().find(|(name, _)| name == var) else {
                continue;
            };
            let bad = |why: &str| format!("environment variable {var}: {why}");
            match *key {
                "host" => self.host = value.trim().to_string(),
                "port" => {
                    self.port = Some(value.trim().parse().map_err(|_| bad("must be 1..=65535"))?)
                }
                "user" => self.user = value.clone(),
                "pass" => self.pass = value.clone(),
                "from" => self.from = value.trim().to_string(),
                "tls_mode" => self.tls_mode = value.trim().to_ascii_lowercase(),
                _ => {
                    self.timeout_ms = value
                        .trim()
                        .parse()
                        .map_err(|_| bad("must be a number of milliseconds"))?
                }
            }
        }
        Ok(())
    }

    /// Checks the section; the message names the key at fault.
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout_ms == 0 {
            return Err("[smtp] timeout_ms: must be positive".into());
        }
        if TlsMode::parse(&self.tls_mode).is_none() {
            return Err("[smtp] tls_mode: must be none, starttls or tls".into());
        }
        if self.port == Some(0) {
            return Err("[smtp] port: must be 1..=65535".into());
        }
        if self.is_configured() && self.from.parse::<Mailbox>().is_err() {
            return Err("[smtp] from: must be an email address when [smtp] host is set".into());
        }
        Ok(())
    }

    /// True when a host is set.
    pub fn is_configured(&self) -> bool {
        !self.host.is_empty()
    }

    /// The tls mode (validated at start; `starttls` if not).
    pub fn tls(&self) -> TlsMode {
        TlsMode::parse(&self.tls_mode).unwrap_or(TlsMode::Starttls)
    }

    /// The port in effect.
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or_else(|| self.tls().default_port())
    }

    /// Ready-to-use settings, `None` when not configured.
    pub fn settings(&self) -> Option<SmtpSettings> {
        if !self.is_configured() {
            return None;
        }
        Some(SmtpSettings {
            from: self.from.parse().ok()?,
            host: self.host.clone(),
            port: self.effective_port(),
            user: (!self.user.is_empty()).then(|| self.user.clone()),
            pass: self.pass.clone(),
            tls_mode: self.tls(),
        })
    }
}

/// The `email_settings` row (password still encrypted).
#[derive(Debug, Clone)]
pub struct StoredSettings {
    pub from: String,
    pub smtp_host: String,
    pub smtp_port: u16,
    pub smtp_user: Option<String>,
    /// `v2:` || nonce || ciphertext (or the legacy nonce || ciphertext), see [`super::crypto`].
    pub smtp_pass_encrypted: Option<Vec<u8>>,
    pub smtp_tls_mode: TlsMode,
    pub updated_at: DateTime<Utc>,
}

impl StoredSettings {
    const SELECT: &'static str = "SELECT from_address, smtp_host, smtp_port, smtp_user, \
        smtp_pass_encrypted, smtp_tls_mode, updated_at FROM email_settings WHERE id";

    /// The saved settings, if any.
    pub async fn load(client: &impl GenericClient) -> Result<Option<Self>, ApiError> {
        Self::query(client, Self::SELECT).await
    }

    /// [`StoredSettings::load`] locking the row for the rest of the transaction.
    pub async fn load_for_update(client: &impl GenericClient) -> Result<Option<Self>, ApiError> {
        Self::query(client, &format!("{} FOR UPDATE", Self::SELECT)).await
    }

    async fn query(client: &impl GenericClient, sql: &str) -> Result<Option<Self>, ApiError> {
        let Some(row) = client.query_opt(sql, &[]).await? else {
            return Ok(None);
        };
        let port: i32 = col(&row, "smtp_port")?;
        let mode: String = col(&row, "smtp_tls_mode")?;
        Ok(Some(Self {
            from: col(&row, "from_address")?,
            smtp_host: col(&row, "smtp_host")?,
            smtp_port: u16::try_from(port)
                .map_err(|_| ApiError::internal(format!("email_settings: port {port}")))?,
            smtp_user: col(&row, "smtp_user")?,
            smtp_pass_encrypted: col(&row, "smtp_pass_encrypted")?,
            smtp_tls_mode: TlsMode::parse(&mode)
                .ok_or_else(|| ApiError::internal(format!("email_settings: tls mode {mode}")))?,
            updated_at: col(&row, "updated_at")?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn smtp_variables_are_read_verbatim_at_load() {
        let c = Config::load(
            None,
            &env(&[
                ("WATCHPOST_SMTP_HOST", "smtp.example.com"),
                ("WATCHPOST_SMTP_PORT", "2525"),
                ("WATCHPOST_SMTP_USER", "mailer"),
                // Would be a TOML integer for the generic loader: must stay text.
                ("WATCHPOST_SMTP_PASS", "123456"),
                ("WATCHPOST_SMTP_FROM", "Ops <ops@example.com>"),
                ("WATCHPOST_SMTP_TLS_MODE", "TLS"),
                ("WATCHPOST_SECRET_KEY", "k"),
            ]),
        )
        .expect("load");
        assert_eq!(c.smtp.pass, "123456");
        assert_eq!(c.smtp.effective_port(), 2525);
        assert_eq!(c.smtp.tls(), TlsMode::Tls);
        assert!(c.secret_key.is_some());
        let s = c.smtp.settings().expect("configured");
        assert_eq!(s.user.as_deref(), Some("mailer"));
        assert_eq!(s.from.email.to_string(), "ops@example.com");
        assert!(!format!("{:?}{:?}", c.smtp, s).contains("123456"));
    }

    #[test]
    fn smtp_defaults_and_errors() {
        let c = Config::load(None, &[]).expect("defaults");
        assert!(!c.smtp.is_configured());
        assert!(c.smtp.settings().is_none());
        assert!(c.secret_key.is_none());
        assert_eq!(c.smtp.timeout_ms, 10_000);
        assert_eq!(c.smtp.effective_port(), 587);
        for (pairs, key) in [
            (
                vec![("WATCHPOST_SMTP_PORT", "70000")],
                "WATCHPOST_SMTP_PORT",
            ),
            (vec![("WATCHPOST_SMTP_TLS_MODE", "ssl")], "tls_mode"),
            (vec![("WATCHPOST_SMTP_HOST", "h")], "from"),
            (vec![("WATCHPOST_SMTP_TIMEOUT_MS", "0")], "timeout_ms"),
            (
                vec![("WATCHPOST_SECRET_KEY_PREVIOUS", "old")],
                "WATCHPOST_SECRET_KEY_PREVIOUS",
            ),
        ] {
            let err = Config::load(None, &env(&pairs)).expect_err(key);
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }
}
