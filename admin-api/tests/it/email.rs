//! Email settings and real SMTP delivery, against a small SMTP server started by each test on
//! an ephemeral loopback port.

use std::sync::{Arc, Mutex};

use crate::common::{assert_error, json_of, TestAdmin, TestApp};
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use watchpost_admin::email::{rotate_secrets, SecretKey, PASSWORD_PURPOSE};

const SECRET: &str = "test secret key for email settings";

// ---------------------------------------------------------------------------------------------
// The in-test SMTP server
// ---------------------------------------------------------------------------------------------

/// How the test server behaves.
#[derive(Clone)]
pub(crate) struct Behaviour {
    /// Required AUTH credentials; `None`: no AUTH needed (still accepted).
    credentials: Option<(String, String)>,
    /// Mechanisms advertised in the EHLO reply.
    mechanisms: &'static str,
    /// A recipient answered with 550.
    reject_rcpt: Option<String>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            credentials: None,
            mechanisms: "PLAIN LOGIN",
            reject_rcpt: None,
        }
    }
}

/// One accepted message.
#[derive(Debug, Clone, Default)]
pub(crate) struct Received {
    /// Mechanism and (user, password) the client authenticated with.
    pub(crate) auth: Option<(String, String, String)>,
    pub(crate) mail_from: String,
    pub(crate) rcpt_to: Vec<String>,
    pub(crate) data: String,
}

pub(crate) struct SmtpServer {
    pub(crate) port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    task: JoinHandle<()>,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpServer {
    pub(crate) async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind smtp");
        let port = listener.local_addr().expect("addr").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let behaviour = behaviour.clone();
                let store = store.clone();
                tokio::spawn(async move {
                    let _ = session(stream, behaviour, store).await;
                });
            }
        });
        Self {
            port,
            received,
            task,
        }
    }

    pub(crate) fn messages(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn unb64(text: &str) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .expect("client sent base64");
    String::from_utf8(bytes).expect("utf-8")
}

/// The address inside `<…>` of a MAIL FROM / RCPT TO line.
fn angle_addr(line: &str) -> String {
    let start = line.find('<').map_or(0, |i| i + 1);
    let end = line[start..].find('>').map_or(line.len(), |i| start + i);
    line[start..end].to_string()
}

async fn session(
    stream: TcpStream,
    b: Behaviour,
    store: Arc<Mutex<Vec<Received>>>,
) -> std::io::Result<()> {
    let (read, mut w) = stream.into_split();
    let mut r = BufReader::new(read);
    let mut line = String::new();
    async fn next(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>, line: &mut String) -> bool {
        line.clear();
        matches!(r.read_line(line).await, Ok(n) if n > 0)
    }
    w.write_all(b"220 sink.test ESMTP ready\r\n").await?;
    let mut current = Received::default();
    let mut authenticated = false;
    while next(&mut r, &mut line).await {
        let cmd = line.trim_end_matches(['\r', '\n']).to_string();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            format!(
                "250-sink.test\r\n250-AUTH {}\r\n250 8BITMIME\r\n",
                b.mechanisms
            )
        } else if upper.starts_with("HELO") {
            "250 sink.test\r\n".into()
        } else if upper.starts_with("AUTH PLAIN") {
            let mut payload = cmd["AUTH PLAIN".len()..].trim().to_string();
            if payload.is_empty() {
                w.write_all(b"334 \r\n").await?;
                if !next(&mut r, &mut line).await {
                    break;
                }
                payload = line.trim().to_string();
            }
            let decoded = unb64(&payload);
            let parts: Vec<&str> = decoded.split('\0').collect();
            let (user, pass) = (parts[1].to_string(), parts[2].to_string());
            check_auth(&b, "PLAIN", user, pass, &mut current, &mut authenticated)
        } else if upper.starts_with("AUTH LOGIN") {
            w.write_all(format!("334 {}\r\n", b64("Username:")).as_bytes())
                .await?;
            if !next(&mut r, &mut line).await {
                break;
            }
            let user = unb64(&line);
            w.write_all(format!("334 {}\r\n", b64("Password:")).as_bytes())
                .await?;
            if !next(&mut r, &mut line).await {
                break;
            }
            let pass = unb64(&line);
            check_auth(&b, "LOGIN", user, pass, &mut current, &mut authenticated)
        } else if upper.starts_with("MAIL FROM:") {
            if b.credentials.is_some() && !authenticated {
                "530 5.7.0 Authentication required\r\n".into()
            } else {
                current.mail_from = angle_addr(&cmd);
                "250 2.1.0 Ok\r\n".into()
            }
        } else if upper.starts_with("RCPT TO:") {
            let addr = angle_addr(&cmd);
            if b.reject_rcpt.as_deref() == Some(addr.as_str()) {
                format!("550 5.1.1 <{addr}>: Recipient address rejected: User unknown\r\n")
            } else {
                current.rcpt_to.push(addr);
                "250 2.1.5 Ok\r\n".into()
            }
        } else if upper == "DATA" {
            w.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                .await?;
            let mut data = String::new();
            while next(&mut r, &mut line).await {
                if line == ".\r\n" {
                    break;
                }
                data.push_str(&line);
            }
            current.data = data;
            store.lock().expect("lock").push(current.clone());
            "250 2.0.0 Ok: queued\r\n".into()
        } else if upper == "RSET" {
            current = Received {
                auth: current.auth.clone(),
                ..Received::default()
            };
            "250 2.0.0 Ok\r\n".into()
        } else if upper == "NOOP" {
            "250 2.0.0 Ok\r\n".into()
        } else if upper == "QUIT" {
            w.write_all(b"221 2.0.0 Bye\r\n").await?;
            break;
        } else {
            "502 5.5.2 Error: command not recognized\r\n".into()
        };
        w.write_all(reply.as_bytes()).await?;
    }
    Ok(())
}

fn check_auth(
    b: &Behaviour,
    mechanism: &str,
    user: String,
    pass: String,
    current: &mut Received,
    authenticated: &mut bool,
) -> String {
    let ok = match &b.credentials {
        Some((u, p)) => *u == user && *p == pass,
        None => true,
    };
    current.auth = Some((mechanism.to_string(), user, pass));
    if ok {
        *authenticated = true;
        "235 2.7.0 Authentication successful\r\n".into()
    } else {
        "535 5.7.8 Error: authentication failed\r\n".into()
    }
}

/// A server that accepts connections and never says anything.
async fn silent_server() -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (port, task)
}

/// A loopback port with nothing listening.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").port()
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

async fn app_with_key() -> TestApp {
    TestApp::builder()
        .configure(|c| {
            c.secret_key = Some(SecretKey::from_text(SECRET).expect("key"));
            c.smtp.timeout_ms = 2000;
        })
        .spawn()
        .await
}

fn smtp_body(port: u16, user: Option<&str>, pass: Option<&str>) -> Value {
    let mut body = json!({
        "from": "Watchpost <noreply@watchpost.test>",
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_tls_mode": "none",
    });
    if let Some(u) = user {
        body["smtp_user"] = json!(u);
    }
    if let Some(p) = pass {
        body["smtp_pass"] = json!(p);
    }
    body
}

async fn put_config(app: &TestApp, admin: &TestAdmin, body: &Value) -> (u16, Value) {
    json_of(
        app.put("/api/admin/email/config")
            .bearer_auth(&admin.key)
            .json(body)
            .send()
            .await
            .expect("put"),
    )
    .await
}

async fn get_json(app: &TestApp, admin: &TestAdmin, path: &str) -> Value {
    let (status, body) = json_of(
        app.get(path)
            .bearer_auth(&admin.key)
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn send_test(app: &TestApp, admin: &TestAdmin, to: &str) -> (u16, Value) {
    json_of(
        app.post("/api/admin/email/test")
            .bearer_auth(&admin.key)
            .json(&json!({ "to": to }))
            .send()
            .await
            .expect("post"),
    )
    .await
}

async fn stored_ciphertext(app: &TestApp) -> Option<Vec<u8>> {
    app.db()
        .await
        .query_one("SELECT smtp_pass_encrypted FROM email_settings", &[])
        .await
        .expect("settings row")
        .get(0)
}

// ---------------------------------------------------------------------------------------------
// Status and config
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn without_settings_email_is_not_configured() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let status = get_json(&app, &admin, "/api/admin/email/status").await;
    assert_eq!(status, json!({"configured": false, "source": "none"}));
    let config = get_json(&app, &admin, "/api/admin/email/config").await;
    assert_eq!(config["source"], "none");
    assert_eq!(config["has_password"], false);
    assert_eq!(config["smtp_host"], Value::Null);

    let (status, body) = send_test(&app, &admin, "someone@example.com").await;
    assert_error(status, &body, 409, "CONFLICT");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not configured")),
        "{body}"
    );
}

#[tokio::test]
async fn environment_settings_are_reported_and_the_saved_ones_win() {
    let app = TestApp::builder()
        .configure(|c| {
            c.secret_key = Some(SecretKey::from_text(SECRET).expect("key"));
            c.smtp.host = "smtp.env.test".into();
            c.smtp.from = "env@watchpost.test".into();
            c.smtp.user = "env-user".into();
            c.smtp.pass = "env-pass".into();
            c.smtp.tls_mode = "tls".into();
        })
        .spawn()
        .await;
    let admin = app.create_admin().await;
    let status = get_json(&app, &admin, "/api/admin/email/status").await;
    assert_eq!(status, json!({"configured": true, "source": "env"}));
    let config = get_json(&app, &admin, "/api/admin/email/config").await;
    assert_eq!(config["source"], "env");
    assert_eq!(config["smtp_host"], "smtp.env.test");
    assert_eq!(config["smtp_port"], 465, "implicit TLS defaults to 465");
    assert_eq!(config["smtp_tls_mode"], "tls");
    assert_eq!(config["smtp_user"], "env-user");
    assert_eq!(config["has_password"], true);
    assert_eq!(config["updated_at"], Value::Null);
    assert!(!config.to_string().contains("env-pass"), "{config}");

    let (status, body) = put_config(&app, &admin, &smtp_body(2525, None, None)).await;
    assert_eq!(status, 204, "{body}");
    let status = get_json(&app, &admin, "/api/admin/email/status").await;
    assert_eq!(status, json!({"configured": true, "source": "db"}));
    let config = get_json(&app, &admin, "/api/admin/email/config").await;
    assert_eq!(config["source"], "db");
    assert_eq!(config["smtp_host"], "127.0.0.1");
    assert_eq!(config["smtp_port"], 2525);
    assert_eq!(config["smtp_user"], Value::Null);
    assert_eq!(
        config["has_password"], false,
        "env password is not inherited"
    );
    assert!(config["updated_at"].is_string(), "{config}");
}

#[tokio::test]
async fn the_password_is_write_only_and_encrypted_at_rest() {
    let app = app_with_key().await;
    let admin = app.create_admin().await;
    let password = "s3cret-smtp-password";

    let (status, body) = put_config(
        &app,
        &admin,
        &smtp_body(2525, Some("mailer"), Some(password)),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let config = get_json(&app, &admin, "/api/admin/email/config").await;
    assert_eq!(config["has_password"], true);
    assert_eq!(config["smtp_user"], "mailer");
    assert_eq!(config["from"], "Watchpost <noreply@watchpost.test>");
    assert!(!config.to_string().contains(password), "{config}");

    // At rest: not the password, not containing it, and it decrypts with the key.
    let sealed = stored_ciphertext(&app).await.expect("ciphertext stored");
    assert_ne!(sealed, password.as_bytes());
    assert!(!sealed
        .windows(password.len())
        .any(|w| w == password.as_bytes()));
    let key = SecretKey::from_text(SECRET).expect("key");
    assert_eq!(
        key.decrypt(PASSWORD_PURPOSE, &sealed).expect("decrypts"),
        password.as_bytes()
    );

    // Absent and null keep it, byte for byte, while host, port and user stay the same.
    let mut new_sender = smtp_body(2525, Some("mailer"), None);
    new_sender["from"] = json!("ops@watchpost.test");
    let (status, _) = put_config(&app, &admin, &new_sender).await;
    assert_eq!(status, 204);
    assert_eq!(stored_ciphertext(&app).await.as_ref(), Some(&sealed));
    let mut with_null = smtp_body(2525, Some("mailer"), None);
    with_null["smtp_pass"] = Value::Null;
    let (status, _) = put_config(&app, &admin, &with_null).await;
    assert_eq!(status, 204);
    assert_eq!(stored_ciphertext(&app).await.as_ref(), Some(&sealed));

    // A masked placeholder sent back never overwrites it.
    let (status, body) = put_config(
        &app,
        &admin,
        &smtp_body(2525, Some("mailer"), Some("********")),
    )
    .await;
    assert_error(status, &body, 400, "BAD_REQUEST");
    assert_eq!(stored_ciphertext(&app).await.as_ref(), Some(&sealed));

    // A new value replaces it (fresh nonce), "" clears it.
    let (status, _) = put_config(
        &app,
        &admin,
        &smtp_body(2525, Some("mailer"), Some("other")),
    )
    .await;
    assert_eq!(status, 204);
    let replaced = stored_ciphertext(&app).await.expect("replaced");
    assert_eq!(
        key.decrypt(PASSWORD_PURPOSE, &replaced).expect("decrypts"),
        b"other"
    );
    let (status, _) = put_config(&app, &admin, &smtp_body(2525, Some("mailer"), Some(""))).await;
    assert_eq!(status, 204);
    assert_eq!(stored_ciphertext(&app).await, None);
    let config = get_json(&app, &admin, "/api/admin/email/config").await;
    assert_eq!(config["has_password"], false);

    // Audited, without the password: has_password before/after only.
    let rows = app.audit_rows("email.config_updated").await;
    assert_eq!(rows.len(), 5, "one row per accepted PUT: {rows:?}");
    assert_eq!(rows[0]["actor_id"], admin.id.as_str());
    assert_eq!(rows[0]["changes"]["has_password"]["after"], true);
    assert_eq!(rows[0]["changes"]["smtp_port"]["after"], 2525);
    assert_eq!(
        rows[1]["changes"]["from"],
        json!({"before": "Watchpost <noreply@watchpost.test>", "after": "ops@watchpost.test"})
    );
    assert!(rows[1]["changes"].get("has_password").is_none(), "kept");
    assert_eq!(rows[3]["changes"]["has_password"]["replaced"], true);
    assert_eq!(
        rows[4]["changes"]["has_password"],
        json!({"before": true, "after": false})
    );
    for row in &rows {
        let text = row.to_string();
        assert!(
            !text.contains(password) && !text.contains("\"other\""),
            "{text}"
        );
    }
}

#[tokio::test]
async fn without_a_secret_key_a_password_cannot_be_stored() {
    let app = TestApp::spawn().await;
    let admin = app.create_admin().await;
    let (status, body) = put_config(&app, &admin, &smtp_body(2525, Some("u"), Some("p"))).await;
    assert_error(status, &body, 422, "UNPROCESSABLE");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("WATCHPOST_SECRET_KEY")),
        "{body}"
    );
    let status = get_json(&app, &admin, "/api/admin/email/status").await;
    assert_eq!(status["source"], "none", "nothing was stored");

    let (status, body) = put_config(&app, &admin, &smtp_body(2525, Some("u"), None)).await;
    assert_eq!(status, 204, "{body}");
    let config = get_json(&app, &admin, "/api/admin/email/config").await;
    assert_eq!(config["source"], "db");
    assert_eq!(config["has_password"], false);
}

#[tokio::test]
async fn invalid_settings_are_400_and_change_nothing() {
    let app = app_with_key().await;
    let admin = app.create_admin().await;
    let good = smtp_body(2525, None, None);
    let cases: Vec<(&str, Value)> = vec![
        ("from", json!("not an address")),
        ("from", json!("")),
        ("smtp_host", json!("")),
        ("smtp_host", json!("bad host")),
        ("smtp_port", json!(0)),
        ("smtp_port", json!(65536)),
        ("smtp_port", json!(-1)),
        ("smtp_tls_mode", json!("ssl")),
        ("smtp_tls_mode", json!("")),
        ("unknown_field", json!(1)),
    ];
    for (field, value) in cases {
        let mut body = good.clone();
        body[field] = value.clone();
        let (status, response) = put_config(&app, &admin, &body).await;
        assert_error(status, &response, 400, "BAD_REQUEST");
        assert!(
            response["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(field)),
            "{field}={value}: {response}"
        );
    }
    let status = get_json(&app, &admin, "/api/admin/email/status").await;
    assert_eq!(status["source"], "none");
    assert!(app.audit_rows("email.config_updated").await.is_empty());

    for to in ["", "nobody", "a@", "<x@y"] {
        let (status, body) = send_test(&app, &admin, to).await;
        assert_error(status, &body, 400, "BAD_REQUEST");
    }
}

#[tokio::test]
async fn email_endpoints_need_a_platform_admin() {
    let app = TestApp::spawn().await;
    let user = app.create_user().await;
    let requests = || {
        vec![
            app.get("/api/admin/email/status"),
            app.get("/api/admin/email/config"),
            app.put("/api/admin/email/config")
                .json(&smtp_body(2525, None, None)),
            app.post("/api/admin/email/test")
                .json(&json!({"to": "a@example.com"})),
        ]
    };
    for request in requests() {
        let (status, body) = json_of(request.send().await.expect("send")).await;
        assert_error(status, &body, 401, "UNAUTHORIZED");
    }
    for request in requests() {
        let (status, body) =
            json_of(request.bearer_auth(&user.token).send().await.expect("send")).await;
        assert_error(status, &body, 403, "FORBIDDEN");
    }
}

// ---------------------------------------------------------------------------------------------
// Delivery
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_test_message_is_delivered_with_auth_plain() {
    let server = SmtpServer::start(Behaviour {
        credentials: Some(("mailer".into(), "p4ss".into())),
        ..Behaviour::default()
    })
    .await;
    let app = app_with_key().await;
    let admin = app.create_admin().await;
    let (status, body) = put_config(
        &app,
        &admin,
        &smtp_body(server.port, Some("mailer"), Some("p4ss")),
    )
    .await;
    assert_eq!(status, 204, "{body}");

    let (status, body) = send_test(&app, &admin, "Ops <ops@example.com>").await;
    assert_eq!(status, 204, "{body}");
    let messages = server.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m = &messages[0];
    assert_eq!(
        m.auth,
        Some(("PLAIN".into(), "mailer".into(), "p4ss".into()))
    );
    assert_eq!(m.mail_from, "noreply@watchpost.test");
    assert_eq!(m.rcpt_to, vec!["ops@example.com".to_string()]);
    assert!(
        m.data.contains("Subject: Watchpost test email\r\n"),
        "{}",
        m.data
    );
    assert!(m.data.contains("noreply@watchpost.test"), "{}", m.data);
    assert!(
        m.data.contains("To: \"Ops\" <ops@example.com>")
            || m.data.contains("To: Ops <ops@example.com>"),
        "{}",
        m.data
    );

    let rows = app.audit_rows("email.test_sent").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["actor_id"], admin.id.as_str());
    assert_eq!(rows[0]["changes"]["to"]["after"], "Ops <ops@example.com>");
    assert_eq!(rows[0]["changes"]["source"]["after"], "db");
}

#[tokio::test]
async fn auth_login_is_used_when_it_is_the_only_mechanism() {
    let server = SmtpServer::start(Behaviour {
        credentials: Some(("mailer".into(), "p4ss".into())),
        mechanisms: "LOGIN",
        ..Behaviour::default()
    })
    .await;
    let app = app_with_key().await;
    let admin = app.create_admin().await;
    put_config(
        &app,
        &admin,
        &smtp_body(server.port, Some("mailer"), Some("p4ss")),
    )
    .await;
    let (status, body) = send_test(&app, &admin, "ops@example.com").await;
    assert_eq!(status, 204, "{body}");
    let messages = server.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].auth,
        Some(("LOGIN".into(), "mailer".into(), "p4ss".into()))
    );
}

#[tokio::test]
async fn environment_settings_deliver_without_auth_when_no_user_is_set() {
    let server = SmtpServer::start(Behaviour::default()).await;
    let port = server.port;
    let app = TestApp::builder()
        .configure(move |c| {
            c.smtp.host = "127.0.0.1".into();
            c.smtp.port = Some(port);
            c.smtp.from = "env-sender@watchpost.test".into();
            c.smtp.tls_mode = "none".into();
            c.smtp.timeout_ms = 2000;
        })
        .spawn()
        .await;
    let admin = app.create_admin().await;
    let (status, body) = send_test(&app, &admin, "dest@example.com").await;
    assert_eq!(status, 204, "{body}");
    let messages = server.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].auth, None);
    assert_eq!(messages[0].mail_from, "env-sender@watchpost.test");
    assert_eq!(messages[0].rcpt_to, vec!["dest@example.com".to_string()]);
    let rows = app.audit_rows("email.test_sent").await;
    assert_eq!(rows[0]["changes"]["source"]["after"], "env");
}

#[tokio::test]
async fn a_refused_recipient_is_502_with_the_server_reply() {
    let server = SmtpServer::start(Behaviour {
        reject_rcpt: Some("ghost@example.com".into()),
        ..Behaviour::default()
    })
    .await;
    let app = app_with_key().await;
    let admin = app.create_admin().await;
    put_config(&app, &admin, &smtp_body(server.port, None, None)).await;
    let (status, body) = send_test(&app, &admin, "ghost@example.com").await;
    assert_error(status, &body, 502, "BAD_GATEWAY");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("550"), "{message}");
    assert!(message.contains("Recipient address rejected"), "{message}");
    assert!(server.messages().is_empty());

    let rows = app.audit_rows("email.test_failed").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["changes"]["to"]["after"], "ghost@example.com");
    assert!(app.audit_rows("email.test_sent").await.is_empty());
}

#[tokio::test]
async fn wrong_credentials_are_502_with_the_server_reply() {
    let server = SmtpServer::start(Behaviour {
        credentials: Some(("mailer".into(), "right".into())),
        ..Behaviour::default()
    })
    .await;
    let app = app_with_key().await;
    let admin = app.create_admin().await;
    put_config(
        &app,
        &admin,
        &smtp_body(server.port, Some("mailer"), Some("wrong")),
    )
    .await;
    let (status, body) = send_test(&app, &admin, "ops@example.com").await;
    assert_error(status, &body, 502, "BAD_GATEWAY");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("535"), "{message}");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn an_unreachable_server_is_502() {
    let app = app_with_key().await;
    let admin = app.create_admin().await;
    put_config(&app, &admin, &smtp_body(closed_port().await, None, None)).await;
    let (status, body) = send_test(&app, &admin, "ops@example.com").await;
    assert_error(status, &body, 502, "BAD_GATEWAY");
}

#[tokio::test]
async fn a_server_that_never_answers_is_502_after_the_timeout() {
    let (port, silent) = silent_server().await;
    let app = app_with_key().await;
    let admin = app.create_admin().await;
    put_config(&app, &admin, &smtp_body(port, None, None)).await;
    let (status, body) = send_test(&app, &admin, "ops@example.com").await;
    assert_error(status, &body, 502, "BAD_GATEWAY");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    silent.abort();
}

#[tokio::test]
async fn a_password_sealed_with_another_key_is_409_not_sent() {
    let server = SmtpServer::start(Behaviour::default()).await;
    let app = app_with_key().await;
    let admin = app.create_admin().await;
    put_config(
        &app,
        &admin,
        &smtp_body(server.port, Some("mailer"), Some("p")),
    )
    .await;
    let other = SecretKey::from_text("another key").expect("key");
    let foreign = other.encrypt(PASSWORD_PURPOSE, b"p").expect("seal");
    app.db()
        .await
        .execute(
            "UPDATE email_settings SET smtp_pass_encrypted = $1",
            &[&foreign],
        )
        .await
        .expect("update");
    let (status, body) = send_test(&app, &admin, "ops@example.com").await;
    assert_error(status, &body, 409, "CONFLICT");
    assert!(server.messages().is_empty());
}

// ---------------------------------------------------------------------------------------------
// The password stays with its server; keys, legacy values and rotation
// ---------------------------------------------------------------------------------------------

/// Whether any message reached `server` authenticated with `password`.
fn saw_password(server: &SmtpServer, password: &str) -> bool {
    server
        .messages()
        .iter()
        .any(|m| m.auth.as_ref().is_some_and(|(_, _, p)| p == password))
}

#[tokio::test]
async fn changing_host_port_or_user_clears_the_stored_password() {
    const OLD: &str = "password-for-the-first-server";
    let first = SmtpServer::start(Behaviour {
        credentials: Some(("mailer".into(), OLD.into())),
        ..Behaviour::default()
    })
    .await;
    // The server an attacker points the settings to: accepts any AUTH and records it.
    let second = SmtpServer::start(Behaviour::default()).await;
    let app = app_with_key().await;
    let admin = app.create_admin().await;
    let saved = smtp_body(first.port, Some("mailer"), Some(OLD));

    // A new port, same host and user, no smtp_pass: the password is gone.
    let (status, body) = put_config(&app, &admin, &saved).await;
    assert_eq!(status, 204, "{body}");
    let (status, body) =
        put_config(&app, &admin, &smtp_body(second.port, Some("mailer"), None)).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(stored_ciphertext(&app).await, None);
    let config = get_json(&app, &admin, "/api/admin/email/config").await;
    assert_eq!(config["has_password"], false, "{config}");
    assert_eq!(config["smtp_port"], second.port);
    let rows = app.audit_rows("email.config_updated").await;
    let last = &rows[rows.len() - 1]["changes"]["has_password"];
    assert_eq!(last["before"], true, "{last}");
    assert_eq!(last["after"], false, "{last}");
    assert!(last["cleared"].is_string(), "{last}");
    // The test message goes to the new server without the old password.
    let (status, body) = send_test(&app, &admin, "ops@example.com").await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(second.messages().len(), 1);
    assert!(!saw_password(&second, OLD), "{:?}", second.messages());
    assert!(first.messages().is_empty());

    // A new host, or a new user, clears it the same way.
    let mut other_host = smtp_body(first.port, Some("mailer"), None);
    other_host["smtp_host"] = json!("smtp.elsewhere.test");
    let other_user = smtp_body(first.port, Some("someone-else"), None);
    let no_user = smtp_body(first.port, None, None);
    for moved in [other_host, other_user, no_user] {
        let (status, body) = put_config(&app, &admin, &saved).await;
        assert_eq!(status, 204, "{body}");
        assert!(stored_ciphertext(&app).await.is_some());
        let (status, body) = put_config(&app, &admin, &moved).await;
        assert_eq!(status, 204, "{body}");
        assert_eq!(stored_ciphertext(&app).await, None, "{moved}");
        let config = get_json(&app, &admin, "/api/admin/email/config").await;
        assert_eq!(config["has_password"], false, "{moved}: {config}");
    }

    // With a new password given, the move keeps the new one.
    let (status, body) = put_config(
        &app,
        &admin,
        &smtp_body(second.port, Some("mailer"), Some("password-for-the-second")),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = send_test(&app, &admin, "ops@example.com").await;
    assert_eq!(status, 204, "{body}");
    assert!(saw_password(&second, "password-for-the-second"));
    assert!(!saw_password(&second, OLD));
    let config = get_json(&app, &admin, "/api/admin/email/config").await;
    assert_eq!(config["has_password"], true);
    assert!(!config.to_string().contains("password-for"), "{config}");
}

/// A value as the first version stored it: nonce || AES-256-GCM ciphertext under the SHA-256
/// of the passphrase, no version tag.
fn legacy_seal(passphrase: &str, plaintext: &[u8]) -> Vec<u8> {
    use aes_gcm::{
        aead::{Aead, KeyInit, Payload},
        Aes256Gcm, Nonce,
    };
    use sha2::{Digest, Sha256};
    let key: [u8; 32] = Sha256::digest(passphrase.as_bytes()).into();
    let nonce: [u8; 12] = rand::random();
    let mut out = nonce.to_vec();
    out.extend(
        Aes256Gcm::new(&key.into())
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: PASSWORD_PURPOSE.as_bytes(),
                },
            )
            .expect("seal"),
    );
    out
}

async fn store_ciphertext(app: &TestApp, value: &[u8]) {
    app.db()
        .await
        .execute(
            "UPDATE email_settings SET smtp_pass_encrypted = $1",
            &[&value],
        )
        .await
        .expect("update");
}

#[tokio::test]
async fn a_password_stored_in_the_legacy_format_still_works_and_rotation_upgrades_it() {
    const LEGACY: &str = "stored-before-the-kdf";
    let server = SmtpServer::start(Behaviour {
        credentials: Some(("mailer".into(), LEGACY.into())),
        ..Behaviour::default()
    })
    .await;
    let app = app_with_key().await;
    let admin = app.create_admin().await;
    put_config(
        &app,
        &admin,
        &smtp_body(server.port, Some("mailer"), Some("placeholder")),
    )
    .await;
    let legacy = legacy_seal(SECRET, LEGACY.as_bytes());
    store_ciphertext(&app, &legacy).await;

    let (status, body) = send_test(&app, &admin, "ops@example.com").await;
    assert_eq!(status, 204, "{body}");
    assert!(saw_password(&server, LEGACY));
    let config = get_json(&app, &admin, "/api/admin/email/config").await;
    assert_eq!(config["has_password"], true);
    assert!(!config.to_string().contains(LEGACY), "{config}");

    // Rotation re-encrypts it in the current format, once.
    let key = SecretKey::from_text(SECRET).expect("key");
    let report = rotate_secrets(&app.pool, &key).await.expect("rotate");
    assert_eq!(report.reencrypted, 1);
    assert_eq!(report.already_current, 0);
    let upgraded = stored_ciphertext(&app).await.expect("still stored");
    assert!(upgraded.starts_with(b"v2:"));
    assert_eq!(
        key.decrypt(PASSWORD_PURPOSE, &upgraded).expect("decrypts"),
        LEGACY.as_bytes()
    );
    let again = rotate_secrets(&app.pool, &key).await.expect("rotate again");
    assert_eq!((again.reencrypted, again.already_current), (0, 1));
    assert_eq!(stored_ciphertext(&app).await, Some(upgraded));
    let rows = app.audit_rows("secrets.rotated").await;
    assert_eq!(rows.len(), 1, "only the run that changed something");
    assert_eq!(
        rows[0]["changes"]["email_settings.smtp_pass_encrypted"]["after"],
        1
    );
    assert!(!rows[0].to_string().contains(LEGACY));

    let (status, body) = send_test(&app, &admin, "ops@example.com").await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(server.messages().len(), 2);
}

#[tokio::test]
async fn the_previous_key_decrypts_during_a_rotation_and_a_wrong_key_is_a_clear_409() {
    const PASS: &str = "sealed-with-the-old-key";
    let server = SmtpServer::start(Behaviour {
        credentials: Some(("mailer".into(), PASS.into())),
        ..Behaviour::default()
    })
    .await;
    // The app runs with a new key and the old one as WATCHPOST_SECRET_KEY_PREVIOUS.
    let app = TestApp::builder()
        .configure(|c| {
            c.secret_key = Some(
                SecretKey::from_text("the new key")
                    .and_then(|k| k.with_previous(SECRET))
                    .expect("keys"),
            );
            c.smtp.timeout_ms = 2000;
        })
        .spawn()
        .await;
    let admin = app.create_admin().await;
    put_config(
        &app,
        &admin,
        &smtp_body(server.port, Some("mailer"), Some("placeholder")),
    )
    .await;
    let old = SecretKey::from_text(SECRET).expect("old key");
    store_ciphertext(
        &app,
        &old.encrypt(PASSWORD_PURPOSE, PASS.as_bytes())
            .expect("seal"),
    )
    .await;
    let (status, body) = send_test(&app, &admin, "ops@example.com").await;
    assert_eq!(status, 204, "{body}");
    assert!(saw_password(&server, PASS));

    // A value no configured key opens: 409 naming both variables, nothing sent, no secret shown.
    let foreign = SecretKey::from_text("a third key").expect("key");
    store_ciphertext(
        &app,
        &foreign
            .encrypt(PASSWORD_PURPOSE, PASS.as_bytes())
            .expect("seal"),
    )
    .await;
    let (status, body) = send_test(&app, &admin, "ops@example.com").await;
    assert_error(status, &body, 409, "CONFLICT");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("WATCHPOST_SECRET_KEY_PREVIOUS"),
        "{message}"
    );
    assert!(!message.contains(PASS), "{message}");
    assert_eq!(server.messages().len(), 1);
}
