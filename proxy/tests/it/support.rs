//! Test harness: a proxy per test on ephemeral ports, a recording mock origin, a raw HTTP/1.1
//! client (so tests control every header line, duplicates and `Connection` included), Redis
//! helpers with a unique key prefix per test, and a Redis server a test can stop and restart.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use watchpost_proxy::{RunningProxy, Settings, StopOn};

/// The Redis every test uses unless it runs its own.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key prefix no other test (or run) shares.
pub fn unique_prefix(name: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "wpt:{}:{}:{}:{}:",
        name,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        ulid::Ulid::new()
    )
}

/// A port that was free a moment ago, for listeners the test cannot bind itself (Pingora binds
/// its own). It is drawn from below the kernel's ephemeral range (32768-60999 by default), so
/// no `bind(":0")` or outgoing connection elsewhere in the test run can be handed the same
/// port between this check and the proxy's bind.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..200 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let port = 20_000 + (h.finish() % 12_000) as u16;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port found in 20000-31999");
}

/// Poll `f` until it returns `Some`, failing the test after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request as the origin received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// The query string as the origin received it (empty when none).
    pub query: String,
    pub headers: HeaderMap,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    pub fn count(&self, name: &str) -> usize {
        self.headers.get_all(name).iter().count()
    }
}

/// A mock origin on an ephemeral port that answers 200 `origin ok` and records every request.
pub struct Origin {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let rec = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let rec = rec.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let rec = rec.clone();
                        async move {
                            rec.lock().expect("lock").push(Received {
                                path: req.uri().path().to_string(),
                                query: req.uri().query().unwrap_or_default().to_string(),
                                headers: req.headers().clone(),
                            });
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                                b"origin ok",
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            received,
            task,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    pub fn last(&self) -> Received {
        self.received()
            .pop()
            .expect("the origin received a request")
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A response read by [`send`].
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("JSON body")
    }
}

/// A browser's headers: scores 0 with the default risk config.
pub const BROWSER: &[(&str, &str)] = &[
    (
        "User-Agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    ),
    ("Accept", "text/html"),
    ("Accept-Language", "en"),
];

/// Send one HTTP/1.1 request with exactly these header lines (plus `Host` and, unless the
/// caller sends its own, `Connection: close`) and read the response.
pub async fn send(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: test.local\r\n");
    let mut has_connection = false;
    for (k, v) in headers {
        has_connection |= k.eq_ignore_ascii_case("connection");
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_connection {
        req.push_str("Connection: close\r\n");
    }
    req.push_str("\r\n");
    send_raw(addr, &req).await
}

/// Send bytes as they are and read one response.
pub async fn send_raw(addr: SocketAddr, raw: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect to proxy");
    stream
        .write_all(raw.as_bytes())
        .await
        .expect("write request");
    read_response(&mut stream).await
}

async fn read_response(stream: &mut TcpStream) -> Reply {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("response within 10 s")
            .expect("read response");
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("body within 10 s")
            .expect("read body");
        assert!(n > 0, "connection closed before the body ended");
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Config text for a test proxy: the given upstreams, Redis and prefix, fast shutdown, plus
/// `extra` TOML (whole sections, e.g. a `[gateway]`).
///
/// The tests run many proxy instances, one after another, in one process. Pingora's
/// per-thread runtimes (`work_stealing = false`, the default) keep a process-wide, per-thread
/// registry that a later instance's threads can inherit from a stopped one, so here every
/// instance uses the shared work-stealing runtime. The default is exercised by `binary.rs`,
/// which runs the real binary in its own process.
pub fn config_text(upstreams: &[SocketAddr], redis_url: &str, prefix: &str, extra: &str) -> String {
    config_text_with(upstreams, redis_url, prefix, "", extra)
}

/// [`config_text`] with further `[proxy]` keys (`proxy_keys`, one `key = value` a line).
pub fn config_text_with(
    upstreams: &[SocketAddr],
    redis_url: &str,
    prefix: &str,
    proxy_keys: &str,
    extra: &str,
) -> String {
    let ups: Vec<String> = upstreams.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\nupstreams = [{ups}]\nhealth_listen = \"127.0.0.1:0\"\n\
         proxy_id = \"test-proxy\"\nthreads = 1\nwork_stealing = true\ngrace_period_secs = 0\nshutdown_timeout_secs = 1\n\
         connect_timeout_ms = 1000\nhealth_check_interval_ms = 200\n{proxy_keys}\n\
         [redis]\nurl = \"{redis_url}\"\nkey_prefix = \"{prefix}\"\n{extra}",
        port = free_port(),
        ups = ups.join(", "),
    )
}

/// A running proxy plus what a test needs to inspect it.
pub struct TestProxy {
    pub proxy: Option<RunningProxy>,
    pub addr: SocketAddr,
    pub health: SocketAddr,
    pub prefix: String,
    pub redis_url: String,
}

impl TestProxy {
    /// Start a proxy in front of `upstreams` on the shared Redis.
    pub async fn start(name: &str, upstreams: &[SocketAddr], extra: &str) -> Self {
        Self::start_on(name, upstreams, &redis_url(), extra).await
    }

    pub async fn start_on(name: &str, upstreams: &[SocketAddr], redis: &str, extra: &str) -> Self {
        Self::start_with(name, upstreams, redis, "", extra).await
    }

    /// [`TestProxy::start_on`] with further `[proxy]` keys.
    pub async fn start_with(
        name: &str,
        upstreams: &[SocketAddr],
        redis: &str,
        proxy_keys: &str,
        extra: &str,
    ) -> Self {
        let prefix = unique_prefix(name);
        let text = config_text_with(upstreams, redis, &prefix, proxy_keys, extra);
        let settings = Settings::load_str(&text, None, &[]).expect("test config is valid");
        // Starting blocks (it waits for the listener), so keep it off the async threads.
        let proxy =
            tokio::task::spawn_blocking(move || watchpost_proxy::start(settings, StopOn::Handle))
                .await
                .expect("start task")
                .expect("proxy starts");
        Self {
            addr: proxy.listen_addr(),
            health: proxy.health_addr(),
            proxy: Some(proxy),
            prefix,
            redis_url: redis.to_string(),
        }
    }

    pub fn metrics(&self) -> &watchpost_proxy::metrics::Metrics {
        self.proxy.as_ref().expect("running").metrics()
    }

    pub async fn get(&self, target: &str, headers: &[(&str, &str)]) -> Reply {
        send(self.addr, "GET", target, headers).await
    }

    pub async fn healthz(&self) -> serde_json::Value {
        send(self.health, "GET", "/healthz", &[]).await.json()
    }

    /// Stop gracefully (flushing the access log) and wait for it.
    pub async fn shutdown(&mut self) {
        if let Some(p) = self.proxy.take() {
            tokio::task::spawn_blocking(move || p.shutdown())
                .await
                .expect("shutdown task");
        }
    }

    pub fn stream_key(&self) -> String {
        format!("{}access", self.prefix)
    }

    /// Every access-log entry, oldest first, fields in stream order.
    pub async fn entries(&self) -> Vec<Vec<(String, String)>> {
        read_stream(&self.redis_url, &self.stream_key()).await
    }

    /// Wait until the stream holds at least `n` entries and return them.
    pub async fn wait_entries(&self, n: usize) -> Vec<Vec<(String, String)>> {
        eventually(
            &format!("{n} access-log entries"),
            Duration::from_secs(10),
            || async {
                let e = self.entries().await;
                (e.len() >= n).then_some(e)
            },
        )
        .await
    }

    /// The entry with this request id.
    pub async fn entry_for(&self, request_id: &str) -> HashMap<String, String> {
        eventually(
            &format!("the entry of {request_id}"),
            Duration::from_secs(10),
            || async {
                self.entries()
                    .await
                    .into_iter()
                    .map(|e| e.into_iter().collect::<HashMap<_, _>>())
                    .find(|e| e.get("request_id").map(String::as_str) == Some(request_id))
            },
        )
        .await
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis_url.as_str())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("Redis must be reachable for the proxy tests")
    }

    /// Delete every key of this test.
    pub async fn cleanup(&mut self) {
        self.shutdown().await;
        if let Ok(client) = redis::Client::open(self.redis_url.as_str()) {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}*", self.prefix))
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut c).await;
                }
            }
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        // Dropping the handle stops the instance in the background.
        self.proxy.take();
    }
}

/// Read a whole stream; a missing stream is empty. Panics when Redis is unreachable.
pub async fn read_stream(url: &str, key: &str) -> Vec<Vec<(String, String)>> {
    // A loaded machine can take longer than the client's default 500 ms to answer a read of a
    // few thousand entries.
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(10)));
    let mut c = redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("Redis must be reachable for the proxy tests");
    let raw: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .expect("XRANGE");
    raw.into_iter()
        .map(|(_, flat)| {
            flat.chunks(2)
                .map(|kv| (kv[0].clone(), kv.get(1).cloned().unwrap_or_default()))
                .collect()
        })
        .collect()
}

/// A Redis server owned by one test, on its own port, that the test can stop and restart.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    pub async fn start() -> Self {
        let mut r = Self::not_started();
        r.restart().await;
        r
    }

    /// A port for a Redis that is not running yet ([`OwnRedis::restart`] starts it).
    pub fn not_started() -> Self {
        Self {
            port: free_port(),
            child: None,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for the outage test");
        self.child = Some(child);
        let url = self.url();
        eventually(
            "the test's redis-server to answer",
            Duration::from_secs(10),
            || {
                let url = url.clone();
                async move {
                    let client = redis::Client::open(url.as_str()).ok()?;
                    let mut c = client.get_multiplexed_async_connection().await.ok()?;
                    redis::cmd("PING").query_async::<String>(&mut c).await.ok()
                }
            },
        )
        .await;
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
