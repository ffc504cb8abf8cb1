//! The `watchpost-admin` binary: database creation, migrations, `create-admin`, bad config.

use std::process::Command;

use crate::common::{DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL};

fn admin_bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_watchpost-admin"));
    // Only what the test sets: no stray WATCHPOST_* overrides from the environment.
    cmd.env_clear();
    cmd
}

fn base_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_string())
}

fn with_database(base: &str, name: &str) -> String {
    let (prefix, _) = base.rsplit_once('/').expect("database url has a path");
    format!("{prefix}/{name}")
}

async fn drop_database(name: &str) {
    let (client, conn) = tokio_postgres::connect(
        &with_database(&base_url(), "postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("maintenance connection");
    tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .expect("drop");
}

#[tokio::test]
async fn migrate_creates_the_database_and_create_admin_prints_only_the_key() {
    let name = format!("wp_test_cli_{}", crate::common::short_id());
    let url = with_database(&base_url(), &name);
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.to_string());

    let out = admin_bin()
        .args(["migrate"])
        .env("DATABASE_URL", &url)
        .env("REDIS_URL", &redis)
        .output()
        .expect("run migrate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = admin_bin()
        .args([
            "create-admin",
            "--email",
            "root@example.com",
            "--name",
            "Root",
        ])
        .env("DATABASE_URL", &url)
        .output()
        .expect("run create-admin");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let check_url = url.clone();
    let result = async move {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "stdout must hold only the key: {stdout:?}");
        assert!(lines[0].starts_with("wpk_"));
        let (client, conn) = tokio_postgres::connect(&check_url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        let row = client
            .query_one(
                "SELECT u.role, u.email FROM api_keys k JOIN users u ON u.id = k.user_id \
                 WHERE k.key_hash = $1",
                &[&watchpost_admin::auth::tokens::hash_token(lines[0])],
            )
            .await
            .expect("the printed key is stored (hashed)");
        assert_eq!(row.get::<_, String>("role"), "platform_admin");
        assert_eq!(row.get::<_, String>("email"), "root@example.com");
    };
    // Clean up even when an assertion fails.
    let outcome = tokio::spawn(result).await;
    drop_database(&name).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[test]
fn invalid_config_exits_with_a_message_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("wp-cli-{}", crate::common::short_id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "[proxy]\nanything = 1\n[admin]\nlisten = \"not an address\"\n",
    )
    .expect("write");
    let out = admin_bin()
        .args(["--config", file.to_str().expect("path"), "migrate"])
        .output()
        .expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[admin] listen"), "{stderr}");
}
