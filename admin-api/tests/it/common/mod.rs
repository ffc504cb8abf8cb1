//! `TestApp`: a real watchpost-admin on 127.0.0.1:0 with its own freshly created and migrated
//! PostgreSQL database and its own Redis key prefix, dropped afterwards.
//!
//! PostgreSQL and Redis come from `DATABASE_URL` / `REDIS_URL` (defaults: the development
//! role and a local Redis). When either is unreachable the test panics with the reason: these
//! tests never skip.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use serde_json::{json, Value};
use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream},
    sync::{oneshot, watch},
};
use watchpost_admin::{cli::create_admin, config::Config, db, AppState};

/// Default `DATABASE_URL`.
pub const DEFAULT_DATABASE_URL: &str = "postgres://watchpost:watchpost@127.0.0.1:5432/watchpost";
/// Default `REDIS_URL`.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// A password that satisfies the default policy.
pub const PASSWORD: &str = "correct horse battery staple";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// A PostgreSQL URL for `database` with the credentials and host of `base`, optionally through
/// another address (a chaos proxy).
fn postgres_url(base: &str, database: &str, via: Option<SocketAddr>) -> String {
    let cfg: tokio_postgres::Config = base.parse().expect("DATABASE_URL must be a postgres URL");
    let user = cfg.get_user().unwrap_or("postgres");
    let password = cfg
        .get_password()
        .map(|p| format!(":{}", String::from_utf8_lossy(p)))
        .unwrap_or_default();
    let (host, port) = match via {
        Some(addr) => (addr.ip().to_string(), addr.port()),
        None => {
            let host = match cfg.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                _ => "127.0.0.1".to_string(),
            };
            (host, cfg.get_ports().first().copied().unwrap_or(5432))
        }
    };
    format!("postgres://{user}{password}@{host}:{port}/{database}")
}

/// An admin created by [`TestApp::create_admin`].
#[derive(Debug, Clone)]
pub struct TestAdmin {
    pub id: String,
    pub email: String,
    /// API key (`wpk_…`).
    pub key: String,
}

/// A normal user created by [`TestApp::create_user`] through `POST /api/auth/register`.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: String,
    pub email: String,
    pub username: String,
    /// Session token (`wps_…`).
    pub token: String,
}

/// A config change applied by [`TestAppBuilder::configure`].
type ConfigChange = Box<dyn FnOnce(&mut Config) + Send>;

/// Builder for [`TestApp`].
pub struct TestAppBuilder {
    changes: Vec<ConfigChange>,
    postgres_via: Option<SocketAddr>,
}

impl TestAppBuilder {
    /// Changes the config before the app starts (e.g. tiny rate limits), after the test
    /// defaults (database, Redis URL and prefix) are set.
    pub fn configure(mut self, f: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.changes.push(Box::new(f));
        self
    }

    /// Makes the app reach PostgreSQL through `addr` (a [`ChaosProxy`]); the database is still
    /// created and migrated directly.
    pub fn postgres_via(mut self, addr: SocketAddr) -> Self {
        self.postgres_via = Some(addr);
        self
    }

    /// Creates the database, migrates, checks Redis and starts the server.
    pub async fn spawn(self) -> TestApp {
        let base_db = env_or("DATABASE_URL", DEFAULT_DATABASE_URL);
        let redis_url = env_or("REDIS_URL", DEFAULT_REDIS_URL);
        let suffix = ulid::Ulid::new().to_string().to_lowercase();
        let db_name = format!("wp_test_{suffix}");
        let key_prefix = format!("wpt_{suffix}:");

        let mut config = Config::default();
        config.postgres.url = postgres_url(&base_db, &db_name, None);
        config.postgres.pool_size = 4;
        config.redis.url = redis_url.clone();
        config.redis.key_prefix = key_prefix.clone();
        // Every test client is 127.0.0.1: the per-IP throttles of the public endpoints are
        // raised out of the way (throttle tests set their own limits).
        config.admin.sign_in_per_ip_per_minute = 1_000_000;
        config.admin.sign_in_per_account_ip_per_minute = 1_000_000;
        config.admin.register_per_ip_per_minute = 1_000_000;
        config.admin.public_per_ip_per_minute = 1_000_000;
        for change in self.changes {
            change(&mut config);
        }
        config.validate().expect("test config is valid");

        // The database is created first, so the cleanup guard must exist right after.
        db::ensure_database(&config.postgres)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL unreachable ({base_db}): {e}"));
        let cleanup = Cleanup {
            maintenance_url: postgres_url(&base_db, "postgres", None),
            db_name: db_name.clone(),
            redis_url: redis_url.clone(),
            key_prefix: key_prefix.clone(),
        };
        db::migrate(&config.postgres)
            .await
            .unwrap_or_else(|e| panic!("migrating {db_name}: {e}"));
        check_redis(&redis_url).await;

        let direct_postgres = config.postgres.clone();
        if let Some(via) = self.postgres_via {
            config.postgres.url = postgres_url(&base_db, &db_name, Some(via));
        }
        let state = AppState::new(config.clone()).expect("state");
        let direct_pool = db::create_pool(&direct_postgres).expect("pool");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let server_state = state.clone();
        let server = tokio::spawn(async move {
            watchpost_admin::server::serve(listener, server_state, async {
                let _ = rx.await;
            })
            .await
            .expect("server");
        });
        TestApp {
            base_url: format!("http://{addr}"),
            client: reqwest::Client::new(),
            state,
            pool: direct_pool,
            config,
            key_prefix,
            shutdown: Some(tx),
            server: Some(server),
            cleanup: Some(cleanup),
        }
    }
}

async fn check_redis(url: &str) {
    let client = redis::Client::open(url).unwrap_or_else(|e| panic!("REDIS_URL {url}: {e}"));
    let mut con = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .unwrap_or_else(|_| panic!("Redis unreachable ({url}): timed out"))
    .unwrap_or_else(|e| panic!("Redis unreachable ({url}): {e}"));
    let pong: String = redis::cmd("PING")
        .query_async(&mut con)
        .await
        .unwrap_or_else(|e| panic!("Redis unreachable ({url}): {e}"));
    assert_eq!(pong, "PONG");
}

/// A running app with its own database and Redis prefix.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    pub client: reqwest::Client,
    /// The app's state (its pool may go through a chaos proxy).
    pub state: AppState,
    /// A pool straight to the test database, for assertions and set-up.
    pub pool: deadpool_postgres::Pool,
    pub config: Config,
    pub key_prefix: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    cleanup: Option<Cleanup>,
}

impl TestApp {
    /// A default app.
    pub async fn spawn() -> Self {
        Self::builder().spawn().await
    }

    /// An app with config changes.
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            changes: Vec::new(),
            postgres_via: None,
        }
    }

    /// Absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// The served OpenAPI document, after checking it answers 200.
    pub async fn openapi(&self) -> Value {
        let (status, doc) = json_of(
            self.get("/api/admin/openapi.json")
                .send()
                .await
                .expect("request"),
        )
        .await;
        assert_eq!(status, 200, "{doc}");
        doc
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path))
    }
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path))
    }
    pub fn patch(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.patch(self.url(path))
    }
    pub fn put(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.put(self.url(path))
    }
    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.delete(self.url(path))
    }

    /// A direct connection to the test database.
    pub async fn db(&self) -> deadpool_postgres::Object {
        self.pool.get().await.expect("test database connection")
    }

    /// Creates a platform admin (as `create-admin` does) and returns its API key.
    pub async fn create_admin(&self) -> TestAdmin {
        let email = format!("admin-{}@example.com", short_id());
        let created = create_admin(&self.pool, &email, Some("Test Admin"))
            .await
            .expect("create admin");
        TestAdmin {
            id: created.user_id,
            email,
            key: created.key,
        }
    }

    /// Registers a normal user through the API and returns its session token.
    pub async fn create_user(&self) -> TestUser {
        let username = format!("user-{}", short_id());
        let email = format!("{username}@example.com");
        let response = self
            .post("/api/auth/register")
            .json(&json!({"email": email, "username": username, "password": PASSWORD}))
            .send()
            .await
            .expect("register request");
        let status = response.status();
        let body: Value = response.json().await.expect("register body");
        assert_eq!(status, 201, "register failed: {body}");
        TestUser {
            id: body["user"]["id"].as_str().expect("id").to_string(),
            email,
            username,
            token: body["token"].as_str().expect("token").to_string(),
        }
    }

    /// Audit rows with this action, oldest first, as JSON objects, with their sealed personal
    /// fields opened as the list endpoint shows them (null when erased).
    pub async fn audit_rows(&self, action: &str) -> Vec<Value> {
        let conn = self.db().await;
        let rows = conn
            .query(
                &format!(
                    "SELECT {} FROM audit_log WHERE action = $1 ORDER BY seq",
                    watchpost_admin::audit::AuditEntry::COLUMNS
                ),
                &[&action],
            )
            .await
            .expect("audit query");
        let mut entries = rows
            .iter()
            .map(watchpost_admin::audit::AuditEntry::from_row)
            .collect::<Result<Vec<_>, _>>()
            .expect("audit rows");
        watchpost_admin::personal::reveal(&conn, self.config.secret_key.as_ref(), &mut entries)
            .await
            .expect("reveal");
        entries
            .iter()
            .map(|e| {
                json!({
                    "id": e.id,
                    "actor_id": e.actor_id,
                    "impersonator_id": e.impersonator_id,
                    "action": e.action,
                    "resource_type": e.resource_type,
                    "resource_id": e.resource_id,
                    "changes": e.changes,
                    "ip": e.ip.map(|ip| ip.to_string()),
                    "user_agent": e.user_agent,
                    "request_id": e.request_id,
                    "erased": e.erased,
                })
            })
            .collect()
    }
}

/// A short unique suffix for names.
pub fn short_id() -> String {
    let u = ulid::Ulid::new().to_string().to_lowercase();
    u[u.len() - 10..].to_string()
}

/// Reads a response as (status, JSON body); a non-JSON body becomes `Value::Null`.
pub async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Asserts the error envelope: status, code, a message and a request id.
#[track_caller]
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(
        body["error"]["request_id"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

struct Cleanup {
    maintenance_url: String,
    db_name: String,
    redis_url: String,
    key_prefix: String,
}

impl Cleanup {
    async fn run(self) {
        if let Ok((client, conn)) =
            tokio_postgres::connect(&self.maintenance_url, tokio_postgres::NoTls).await
        {
            tokio::spawn(conn);
            let sql = format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                db::quote_ident(&self.db_name)
            );
            if let Err(e) = client.batch_execute(&sql).await {
                eprintln!("could not drop test database {}: {e}", self.db_name);
            }
        }
        if let Ok(client) = redis::Client::open(self.redis_url.as_str()) {
            if let Ok(mut con) = client.get_multiplexed_async_connection().await {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}*", self.key_prefix))
                    .query_async(&mut con)
                    .await
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: redis::RedisResult<()> =
                        redis::cmd("DEL").arg(keys).query_async(&mut con).await;
                }
            }
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
        if let Some(cleanup) = self.cleanup.take() {
            // Drop runs inside the test's runtime, which cannot be blocked on; clean up on a
            // thread with its own runtime and wait for it.
            let handle = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(cleanup.run());
                }
            });
            let _ = handle.join();
        }
    }
}

/// A TCP proxy in front of PostgreSQL that a test can cut and restore, to see the API fail
/// with 503 and recover.
pub struct ChaosProxy {
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
    forwarding: Arc<AtomicBool>,
}

impl ChaosProxy {
    /// Starts forwarding to `target` (host:port).
    pub async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (up, _) = watch::channel(true);
        let forwarding = Arc::new(AtomicBool::new(true));
        let up_tx = up.clone();
        let flag = forwarding.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut down = up_tx.subscribe();
                let target = target.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = copy_bidirectional(&mut inbound, &mut outbound) => {},
                        _ = down.wait_for(|up| !*up) => {},
                    }
                });
            }
        });
        Self {
            addr,
            up,
            forwarding,
        }
    }

    /// The PostgreSQL address of `DATABASE_URL`.
    pub fn postgres_target() -> String {
        let url = env_or("DATABASE_URL", DEFAULT_DATABASE_URL);
        let cfg: tokio_postgres::Config = url.parse().expect("DATABASE_URL");
        let host = match cfg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_string(),
        };
        format!(
            "{host}:{}",
            cfg.get_ports().first().copied().unwrap_or(5432)
        )
    }

    /// Closes every forwarded connection and refuses new ones.
    pub fn cut(&self) {
        self.forwarding.store(false, Ordering::SeqCst);
        self.up.send_replace(false);
    }

    /// Forwards again.
    pub fn restore(&self) {
        self.up.send_replace(true);
        self.forwarding.store(true, Ordering::SeqCst);
    }
}

/// One admin-API call: `method` on `/api/admin{path}` with `token` (none when empty) and an
/// optional JSON body; answers the status and the JSON body.
pub async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("/api/admin{path}");
    let builder = match method {
        "GET" => app.get(&url),
        "POST" => app.post(&url),
        "PATCH" => app.patch(&url),
        "DELETE" => app.delete(&url),
        other => panic!("method {other}"),
    };
    let builder = if token.is_empty() {
        builder
    } else {
        builder.bearer_auth(token)
    };
    let builder = match body {
        Some(b) => builder.json(&b),
        None => builder,
    };
    json_of(builder.send().await.expect("request")).await
}

/// An organization inserted directly (no audit, no API), with a zero balance.
pub async fn seed_org(app: &TestApp) -> String {
    let id = format!("org_{}", ulid::Ulid::new());
    let name = format!("org-{}", short_id());
    app.db()
        .await
        .execute(
            "INSERT INTO organizations (id, name, display_name) VALUES ($1, $2, $2)",
            &[&id, &name],
        )
        .await
        .expect("insert org");
    id
}

/// A member of `org` (created directly, without password hashing): its id and a session token
/// (it reaches every user-facing route; an API key reaches only what its scopes cover).
pub async fn seed_member(app: &TestApp, org: &str) -> (String, String) {
    let mut conn = app.db().await;
    let tx = conn.transaction().await.expect("tx");
    let id = format!("usr_{}", ulid::Ulid::new());
    let name = format!("m-{}", short_id());
    tx.execute(
        "INSERT INTO users (id, email, username) VALUES ($1, $2 || '@example.com', $2)",
        &[&id, &name],
    )
    .await
    .expect("user");
    tx.execute(
        "INSERT INTO memberships (organization_id, user_id, role) VALUES ($1, $2, 'member')",
        &[&org, &id],
    )
    .await
    .expect("membership");
    let session =
        watchpost_admin::auth::issue_session(&tx, &id, chrono::Duration::days(1), None, None, None)
            .await
            .expect("session");
    tx.commit().await.expect("commit");
    (id, session.token)
}

/// The organization's stored credit balance.
pub async fn balance(app: &TestApp, org: &str) -> i64 {
    app.db()
        .await
        .query_one(
            "SELECT credits_balance FROM organizations WHERE id = $1",
            &[&org],
        )
        .await
        .expect("balance")
        .get(0)
}

/// Queues, on `pipe`, an access-log entry under an explicit stream id together with its index
/// postings, exactly as the proxy's append script lays out a batch of one entry (the entry's id
/// is the batch's base id, its offset 0; same postings streams, same registry). Tests that need
/// chosen ids use it; tests of the writer itself go through
/// `watchpost_proxy::access_log::append_batch`.
pub fn xadd_indexed(
    pipe: &mut redis::Pipeline,
    keys: &watchpost_common::Keys,
    id: &str,
    e: &watchpost_common::AccessLogEntry,
) {
    xadd_indexed_in(pipe, &keys.access(), id, e);
}

/// [`xadd_indexed`] into one access-log family (a shard): its stream, postings and registry.
pub fn xadd_indexed_in(
    pipe: &mut redis::Pipeline,
    family: &watchpost_common::AccessKeys,
    id: &str,
    e: &watchpost_common::AccessLogEntry,
) {
    use watchpost_common::access_index::batch_postings;
    let cmd = pipe.cmd("XADD").arg(family.stream()).arg(id);
    for (k, v) in e.to_fields() {
        cmd.arg(k).arg(v);
    }
    cmd.ignore();
    for p in batch_postings(family, std::slice::from_ref(e)) {
        let cmd = pipe.cmd("XADD").arg(&p.key).arg(id);
        for (field, offsets) in &p.fields {
            cmd.arg(field).arg(offsets);
        }
        cmd.ignore();
        pipe.cmd("SADD")
            .arg(family.postings_registry())
            .arg(&p.key)
            .ignore();
    }
}
