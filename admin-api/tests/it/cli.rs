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

#[tokio::test]
async fn rotate_secrets_moves_every_stored_secret_to_the_new_key() {
    use clap::Parser as _;
    use serde_json::json;
    use watchpost_admin::{
        cli::{run, Cli},
        email::{SecretKey, PASSWORD_PURPOSE},
    };
    use watchpost_common::config::{ENV_SECRET_KEY, ENV_SECRET_KEY_PREVIOUS};

    const OLD: &str = "the key being retired";
    const NEW: &str = "the key taking over";
    const PASS: &str = "smtp-password-to-rotate";
    let app = crate::common::TestApp::builder()
        .configure(|c| c.secret_key = Some(SecretKey::from_text(OLD).expect("key")))
        .spawn()
        .await;
    let admin = app.create_admin().await;
    let response = app
        .put("/api/admin/email/config")
        .bearer_auth(&admin.key)
        .json(&json!({
            "from": "noreply@watchpost.test",
            "smtp_host": "127.0.0.1",
            "smtp_port": 2525,
            "smtp_user": "mailer",
            "smtp_pass": PASS,
            "smtp_tls_mode": "none",
        }))
        .send()
        .await
        .expect("put");
    assert_eq!(response.status(), 204);
    let stored = || async {
        app.db()
            .await
            .query_one("SELECT smtp_pass_encrypted FROM email_settings", &[])
            .await
            .expect("row")
            .get::<_, Option<Vec<u8>>>(0)
            .expect("a password is stored")
    };
    let sealed = stored().await;
    let url = app.config.postgres.url.clone();
    let env = |keys: &[(&str, &str)]| {
        let mut pairs = vec![("DATABASE_URL".to_string(), url.clone())];
        pairs.extend(keys.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        pairs
    };
    let command = || Cli::parse_from(["watchpost-admin", "rotate-secrets"]);

    // The new key alone cannot open the old value: a clear error, and nothing changes.
    let err = run(command(), &env(&[(ENV_SECRET_KEY, NEW)]))
        .await
        .expect_err("the old value cannot be opened");
    let message = err.to_string();
    assert!(
        message.contains("email_settings.smtp_pass_encrypted"),
        "{message}"
    );
    assert!(message.contains(ENV_SECRET_KEY_PREVIOUS), "{message}");
    assert!(
        !message.contains(PASS) && !message.contains(OLD),
        "{message}"
    );
    assert_eq!(stored().await, sealed);

    // With the old key as the previous one, the value moves to the new key.
    run(
        command(),
        &env(&[(ENV_SECRET_KEY, NEW), (ENV_SECRET_KEY_PREVIOUS, OLD)]),
    )
    .await
    .expect("rotate");
    let rotated = stored().await;
    assert_ne!(rotated, sealed);
    let new_only = SecretKey::from_text(NEW).expect("key");
    assert_eq!(
        new_only
            .decrypt(PASSWORD_PURPOSE, &rotated)
            .expect("new key opens it"),
        PASS.as_bytes()
    );
    assert!(SecretKey::from_text(OLD)
        .expect("key")
        .decrypt(PASSWORD_PURPOSE, &rotated)
        .is_err());
    assert_eq!(app.audit_rows("secrets.rotated").await.len(), 1);

    // The binary: a second run re-encrypts nothing and never prints a secret.
    let out = admin_bin()
        .args(["rotate-secrets"])
        .env("DATABASE_URL", &url)
        .env(ENV_SECRET_KEY, NEW)
        .env(ENV_SECRET_KEY_PREVIOUS, OLD)
        .output()
        .expect("run rotate-secrets");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("re-encrypted 0 stored secret(s)") && stdout.contains("1 already current"),
        "{stdout}"
    );
    for text in [&stdout, &stderr] {
        assert!(
            !text.contains(PASS) && !text.contains(NEW) && !text.contains(OLD),
            "{text}"
        );
    }
    assert_eq!(stored().await, rotated);
    assert_eq!(app.audit_rows("secrets.rotated").await.len(), 1);

    // Without a key there is nothing to encrypt with.
    let out = admin_bin()
        .args(["rotate-secrets"])
        .env("DATABASE_URL", &url)
        .output()
        .expect("run rotate-secrets");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(ENV_SECRET_KEY), "{stderr}");
}
