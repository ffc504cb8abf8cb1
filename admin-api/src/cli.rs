//! The command line: `watchpost-admin [--config FILE] [serve|migrate|create-admin|rotate-secrets|archive]`.

use clap::{Parser, Subcommand};
use deadpool_postgres::Pool;

use crate::{
    audit::{self, AuditCtx},
    auth::{create_api_key, SCOPE_ADMIN},
    config::Config,
    error::ApiError,
    ids::IdKind,
    models::User,
    server,
    state::AppState,
    validate, StartupError,
};

/// Watchpost's admin API.
#[derive(Debug, Parser)]
#[command(name = "watchpost-admin", version, about)]
pub struct Cli {
    /// TOML config file (sections [admin], [redis], [postgres]; others are ignored).
    #[arg(long, value_name = "FILE")]
    pub config: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands; `serve` is the default.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database if missing, migrate, and serve the API (default).
    Serve,
    /// Create the database if missing and apply migrations, then exit.
    Migrate,
    /// Create (or reuse) a platform admin with this email and print a new API key once.
    CreateAdmin {
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// Re-encrypt every stored secret with WATCHPOST_SECRET_KEY (values sealed with
    /// WATCHPOST_SECRET_KEY_PREVIOUS or in the legacy format), print how many, and exit.
    /// Running it again re-encrypts nothing.
    RotateSecrets,
    /// Copy the access-log stream into hourly, gzipped NDJSON files under `[archive] dir`
    /// (`access-YYYY-MM-DDTHH.ndjson.gz`, by the UTC hour of each entry's stream id), reading
    /// through the consumer group `[archive] group` as `[archive] consumer`. Entries are
    /// acknowledged only once written and fsynced; after a crash or restart the archiver takes
    /// up what was delivered but not acknowledged, and skips what is already on disk, so every
    /// entry is archived exactly once (the stream is read at least once). Entries trimmed from
    /// the stream before they were archived are counted. Metrics on `[archive] metrics_listen`
    /// (`GET /metrics`). Runs until SIGINT/SIGTERM, finishing the round in progress.
    Archive,
}

/// Runs the parsed command with the given environment.
pub async fn run(cli: Cli, env: &[(String, String)]) -> Result<(), StartupError> {
    let config = Config::load(cli.config.as_deref(), env)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => {
            crate::db::ensure_database(&config.postgres).await?;
            let applied = crate::db::migrate(&config.postgres).await?;
            eprintln!("migrations applied: {applied}");
            Ok(())
        }
        Command::CreateAdmin { email, name } => {
            crate::db::ensure_database(&config.postgres).await?;
            crate::db::migrate(&config.postgres).await?;
            let pool = crate::db::create_pool(&config.postgres)?;
            let created =
                create_admin_with_key(&pool, &email, name.as_deref(), config.secret_key.clone())
                    .await?;
            eprintln!(
                "API key for platform admin {} ({}); it is shown only once:",
                created.email, created.user_id
            );
            println!("{}", created.key);
            Ok(())
        }
        Command::RotateSecrets => {
            let key = config.secret_key.clone().ok_or_else(|| {
                StartupError::Config(format!(
                    "rotate-secrets needs {} (the key to encrypt with), and {} while values \
                     sealed with the old key remain",
                    watchpost_common::config::ENV_SECRET_KEY,
                    watchpost_common::config::ENV_SECRET_KEY_PREVIOUS
                ))
            })?;
            crate::db::ensure_database(&config.postgres).await?;
            crate::db::migrate(&config.postgres).await?;
            let pool = crate::db::create_pool(&config.postgres)?;
            let report = crate::email::rotate_secrets(&pool, &key).await?;
            println!(
                "re-encrypted {} stored secret(s) with the current key; {} already current",
                report.reencrypted, report.already_current
            );
            println!(
                "re-wrapped {} personal-data key(s) with the current key; {} already current",
                report.data_keys_rewrapped, report.data_keys_already_current
            );
            Ok(())
        }
        Command::Archive => {
            let target = config.redis.target();
            let keys = target.keys(config.redis.key_prefix.clone());
            let metrics = crate::archive::ArchiveMetrics::new()
                .map_err(|e| StartupError::Config(format!("metrics: {e}")))?;
            // Every shard (and every retired shard still registered), each on its own.
            let archiver = crate::archive::Archiver::sharded(
                &target,
                &keys,
                config.access_log.shard_count(),
                &config.archive,
                metrics.clone(),
            )
            .await?;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                server::shutdown_signal().await;
                let _ = stop_tx.send(true);
            });
            let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|v| *v).await;
            };
            if !config.archive.metrics_listen.is_empty() {
                let addr = config.archive.metrics_listen.parse().map_err(|_| {
                    StartupError::Config("[archive] metrics_listen: invalid".into())
                })?;
                let (m, rx) = (metrics.clone(), stop_rx.clone());
                tokio::spawn(async move {
                    if let Err(e) = crate::archive::serve_metrics(addr, m, stopped(rx)).await {
                        tracing::error!(error = %e, "archive: metrics listener failed");
                    }
                });
            }
            tracing::info!(dir = %config.archive.dir, "archive: running");
            let n = archiver.run(stopped(stop_rx)).await?;
            eprintln!("archived {n} entries");
            Ok(())
        }
        Command::Serve => {
            let addr = config.listen_addr()?;
            crate::db::ensure_database(&config.postgres).await?;
            crate::db::migrate(&config.postgres).await?;
            let state = AppState::new(config)?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(StartupError::Io)?;
            tracing::info!(%addr, "watchpost-admin listening");
            server::serve(listener, state, server::shutdown_signal()).await
        }
    }
}

/// The result of [`create_admin`].
#[derive(Debug, Clone)]
pub struct CreatedAdmin {
    pub user_id: String,
    pub email: String,
    /// The new API key (`wpk_…`), not stored anywhere.
    pub key: String,
}

/// Creates a platform admin with `email` (or promotes the existing user with that email) and
/// issues a new API key. Audited with no actor (`user.created` or `user.updated`, then
/// `api_key.created`).
pub async fn create_admin(
    pool: &Pool,
    email: &str,
    name: Option<&str>,
) -> Result<CreatedAdmin, StartupError> {
    create_admin_with_key(pool, email, name, None).await
}

/// [`create_admin`] with the server's secret key (`WATCHPOST_SECRET_KEY`), which wraps the
/// per-user key sealing the personal fields of its audit rows.
pub async fn create_admin_with_key(
    pool: &Pool,
    email: &str,
    name: Option<&str>,
    secret_key: Option<crate::email::SecretKey>,
) -> Result<CreatedAdmin, StartupError> {
    let fail = |e: ApiError| StartupError::Postgres(e.to_string());
    let email = validate::email(email).map_err(|e| StartupError::Config(e.public_message()))?;
    let name = name
        .map(|n| validate::text("name", n, 200))
        .transpose()
        .map_err(|e| StartupError::Config(e.public_message()))?;
    let mut conn = pool.get().await.map_err(|e| fail(e.into()))?;
    let tx = conn.transaction().await.map_err(|e| fail(e.into()))?;
    let ctx = AuditCtx::system_with_key(secret_key);
    let select = format!(
        "SELECT {} FROM users WHERE lower(email) = lower($1) FOR UPDATE",
        User::COLUMNS
    );
    let existing = tx
        .query_opt(&select, &[&email])
        .await
        .map_err(|e| fail(e.into()))?;
    let user = match existing {
        Some(row) => {
            let before = User::from_row(&row).map_err(fail)?;
            if before.role != "platform_admin" {
                let row = tx
                    .query_one(
                        &format!(
                            "UPDATE users SET role = 'platform_admin', updated_at = now() \
                             WHERE id = $1 RETURNING {}",
                            User::COLUMNS
                        ),
                        &[&before.id],
                    )
                    .await
                    .map_err(|e| fail(e.into()))?;
                let after = User::from_row(&row).map_err(fail)?;
                let mut changes = audit::diff(
                    &audit::snapshot(&before).map_err(fail)?,
                    &audit::snapshot(&after).map_err(fail)?,
                );
                if let Some(m) = changes.as_object_mut() {
                    m.remove("updated_at");
                }
                audit::record(&tx, &ctx, "user.updated", "user", &after.id, changes)
                    .await
                    .map_err(fail)?;
                after
            } else {
                before
            }
        }
        None => {
            let id = IdKind::User.new_id();
            let username = free_username(&tx, &email).await.map_err(fail)?;
            let row = tx
                .query_one(
                    &format!(
                        "INSERT INTO users (id, email, username, name, role, email_verified) \
                         VALUES ($1, $2, $3, $4, 'platform_admin', true) RETURNING {}",
                        User::COLUMNS
                    ),
                    &[&id, &email, &username, &name],
                )
                .await
                .map_err(|e| fail(e.into()))?;
            let user = User::from_row(&row).map_err(fail)?;
            let changes = audit::created(&audit::snapshot(&user).map_err(fail)?);
            audit::record(&tx, &ctx, "user.created", "user", &user.id, changes)
                .await
                .map_err(fail)?;
            user
        }
    };
    let key = create_api_key(&tx, &user.id, "create-admin", &[SCOPE_ADMIN], None)
        .await
        .map_err(fail)?;
    audit::record(
        &tx,
        &ctx,
        "api_key.created",
        "api_key",
        &key.id,
        serde_json::json!({
            "user_id": {"before": null, "after": user.id},
            "name": {"before": null, "after": "create-admin"},
            "prefix": {"before": null, "after": key.prefix},
            "scopes": {"before": null, "after": [SCOPE_ADMIN]},
        }),
    )
    .await
    .map_err(fail)?;
    tx.commit().await.map_err(|e| fail(e.into()))?;
    Ok(CreatedAdmin {
        user_id: user.id,
        email: user.email,
        key: key.key,
    })
}

/// A username derived from the email's local part that no user has yet.
async fn free_username(
    tx: &deadpool_postgres::Transaction<'_>,
    email: &str,
) -> Result<String, ApiError> {
    let local = email.split('@').next().unwrap_or_default();
    let mut base: String = local
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    base = base.trim_start_matches(['_', '.', '-']).to_string();
    if base.len() < 3 {
        base = format!("admin{base}");
    }
    let mut candidate = base.clone();
    for _ in 0..20 {
        let taken = tx
            .query_opt(
                "SELECT 1 FROM users WHERE lower(username) = lower($1)",
                &[&candidate],
            )
            .await?
            .is_some();
        if !taken {
            return Ok(candidate);
        }
        let suffix: u32 = rand::random::<u32>() % 100_000;
        candidate = format!("{base}-{suffix}");
    }
    Err(ApiError::conflict("could not find a free username"))
}
