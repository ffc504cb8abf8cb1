//! PostgreSQL: the connection pool, creating the database when missing, and migrations.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio_postgres::NoTls;

use crate::{config::PostgresConfig, StartupError};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Advisory lock key held while migrating, so that two instances starting together never run
/// the same migration twice. (Audit-log writers use [`crate::audit::AUDIT_LOCK_KEY`].)
const MIGRATION_LOCK_KEY: i64 = 0x5750_4d49_4752; // "WPMIGR"

/// The database named in a connection URL.
pub fn database_name(url: &str) -> Option<String> {
    let config: tokio_postgres::Config = url.parse().ok()?;
    config.get_dbname().map(str::to_string)
}

/// A PostgreSQL identifier quoted for SQL text (`"a""b"`), for statements such as
/// `CREATE DATABASE` that cannot take parameters.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Human words for a unique constraint, used in 409 messages.
pub fn describe_constraint(constraint: &str) -> &str {
    match constraint {
        "users_email_lower_key" => "email",
        "users_username_lower_key" => "username",
        "organizations_name_key" => "organization name",
        "groups_org_name_key" => "group name",
        "memberships_pkey" => "membership",
        "group_members_pkey" => "group membership",
        _ => "a unique value",
    }
}

fn pg_config(config: &PostgresConfig) -> Result<tokio_postgres::Config, StartupError> {
    let mut pg: tokio_postgres::Config = config
        .url
        .parse()
        .map_err(|e| StartupError::Config(format!("[postgres] url: {e}")))?;
    pg.connect_timeout(Duration::from_millis(config.connect_timeout_ms));
    pg.application_name("watchpost-admin");
    Ok(pg)
}

/// Builds the pool. No connection is made until first use, so this never fails because
/// PostgreSQL is down; requests then answer 503 until it returns.
pub fn create_pool(config: &PostgresConfig) -> Result<Pool, StartupError> {
    let pg = pg_config(config)?;
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            // `Fast` would hand out connections that died during an outage.
            recycling_method: RecyclingMethod::Verified,
        },
    );
    Pool::builder(manager)
        .max_size(config.pool_size)
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(Duration::from_millis(config.wait_timeout_ms)),
            create: Some(Duration::from_millis(config.connect_timeout_ms)),
            recycle: Some(Duration::from_millis(config.recycle_timeout_ms)),
        })
        .build()
        .map_err(|e| StartupError::Postgres(format!("building the pool: {e}")))
}

async fn connect(pg: &tokio_postgres::Config) -> Result<tokio_postgres::Client, StartupError> {
    let (client, connection) = pg
        .connect(NoTls)
        .await
        .map_err(|e| StartupError::Postgres(format!("connecting: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres maintenance connection ended");
        }
    });
    Ok(client)
}

/// Creates the database named in the URL when it does not exist, connecting to the `postgres`
/// maintenance database with the same credentials. Returns true when it was created.
pub async fn ensure_database(config: &PostgresConfig) -> Result<bool, StartupError> {
    let pg = pg_config(config)?;
    let name = pg
        .get_dbname()
        .ok_or_else(|| StartupError::Config("[postgres] url must name a database".into()))?
        .to_string();
    let mut maintenance = pg.clone();
    maintenance.dbname("postgres");
    let client = connect(&maintenance).await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(|e| StartupError::Postgres(format!("looking up database {name}: {e}")))?
        .is_some();
    if exists {
        return Ok(false);
    }
    match client
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name)))
        .await
    {
        Ok(()) => {
            tracing::info!(database = %name, "created database");
            Ok(true)
        }
        // Another instance created it between our check and our CREATE.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {
            Ok(false)
        }
        Err(e) => Err(StartupError::Postgres(format!(
            "creating database {name}: {e}"
        ))),
    }
}

/// Applies pending migrations; returns how many were applied.
pub async fn migrate(config: &PostgresConfig) -> Result<usize, StartupError> {
    let pg = pg_config(config)?;
    let mut client = connect(&pg).await?;
    let fail = |e: &dyn std::fmt::Display| StartupError::Postgres(format!("migrating: {e}"));
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(|e| fail(&e))?;
    let report = embedded::migrations::runner()
        .run_async(&mut client)
        .await
        .map_err(|e| fail(&e));
    // The lock dies with the connection anyway; unlocking early just lets others go sooner.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    let applied = report?.applied_migrations().len();
    if applied > 0 {
        tracing::info!(applied, "applied migrations");
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_safely() {
        assert_eq!(quote_ident("watchpost"), "\"watchpost\"");
        assert_eq!(quote_ident("a\"; DROP"), "\"a\"\"; DROP\"");
    }

    #[test]
    fn database_name_comes_from_the_url() {
        assert_eq!(
            database_name("postgres://u:p@h:5432/wp_1").as_deref(),
            Some("wp_1")
        );
        assert_eq!(database_name("postgres://u:p@h:5432"), None);
    }
}
