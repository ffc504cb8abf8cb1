//! `--upgrade`: a new binary takes the listening socket over from the running one (SIGQUIT)
//! while clients keep sending requests; none of them fails.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    config_text, eventually, read_stream, redis_url, unique_prefix, Origin, BROWSER,
};

const BIN: &str = env!("CARGO_BIN_EXE_watchpost-proxy");

fn spawn(path: &str, proxy_id: &str, upgrade: bool, log: &std::path::Path) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.args(["--config", path]);
    if upgrade {
        cmd.arg("--upgrade");
    }
    cmd.env("WATCHPOST_PROXY_PROXY_ID", proxy_id)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn the proxy")
}

/// One request on a fresh connection; true when it was answered 200.
async fn one(addr: std::net::SocketAddr) -> bool {
    let Ok(mut c) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let mut req = "GET /load HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n".to_string();
    for (k, v) in BROWSER {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    if c.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut buf)).await {
        Ok(Ok(_)) => buf.starts_with(b"HTTP/1.1 200") && buf.ends_with(b"origin ok"),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_under_load_fails_no_request() {
    let origin = Origin::start().await;
    let prefix = unique_prefix("upgrade");
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("upgrade.sock");
    // One client address sends thousands of requests: a rate limit no load test reaches.
    let text = config_text(
        &[origin.addr],
        &redis_url(),
        &prefix,
        "[risk]\nrate_limit = 1e12\n",
    )
    .replace("work_stealing = true", "work_stealing = false")
    .replace(
        "grace_period_secs = 0",
        &format!(
            "grace_period_secs = 1\nupgrade_sock = \"{}\"",
            sock.display()
        ),
    );
    let listen: std::net::SocketAddr = text
        .lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("listen line")
        .parse()
        .expect("addr");
    let path = dir.path().join("watchpost.toml");
    std::fs::write(&path, &text).expect("write config");
    let path = path.display().to_string();
    let mut old = spawn(&path, "old", false, &dir.path().join("old.log"));
    eventually(
        "the old binary to listen",
        Duration::from_secs(20),
        || async { tokio::net::TcpStream::connect(listen).await.ok() },
    )
    .await;

    // Continuous load: four clients, a new connection per request.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if one(listen).await {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    eventually("load to flow", Duration::from_secs(10), || async {
        (ok.load(Ordering::Relaxed) > 20).then_some(())
    })
    .await;

    // The new binary waits on the upgrade socket; then the old one is told to hand over.
    let mut new = spawn(&path, "new", true, &dir.path().join("new.log"));
    eventually(
        "the new binary to wait on the upgrade socket",
        Duration::from_secs(20),
        || async { sock.exists().then_some(()) },
    )
    .await;
    let status = Command::new("kill")
        .args(["-QUIT", &old.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || old.wait())
        .await
        .expect("wait task")
        .expect("wait");
    assert!(exit.success(), "old process: {exit:?}");
    // Requests after the old process is gone are the new one's.
    let after = ok.load(Ordering::Relaxed);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while ok.load(Ordering::Relaxed) <= after + 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "no requests served by the new binary ({} failed); old log:\n{}\nnew log:\n{}",
            failed.load(Ordering::Relaxed),
            std::fs::read_to_string(dir.path().join("old.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("new.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    let new_alive = new.try_wait().expect("status").is_none();
    let _ = Command::new("kill")
        .args(["-TERM", &new.id().to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || new.wait()).await;
    assert!(new_alive, "the new binary kept running");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} requests succeeded; old log:\n{}\nnew log:\n{}",
        ok.load(Ordering::Relaxed),
        std::fs::read_to_string(dir.path().join("old.log")).unwrap_or_default(),
        std::fs::read_to_string(dir.path().join("new.log")).unwrap_or_default()
    );
    // Both processes logged requests.
    let entries = read_stream(&redis_url(), &format!("{prefix}access")).await;
    for id in ["old", "new"] {
        assert!(
            entries
                .iter()
                .any(|e| e.iter().any(|(k, v)| k == "proxy_id" && v == id)),
            "entries from {id}"
        );
    }
    let mut c = redis::Client::open(redis_url().as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut c)
        .await
        .expect("KEYS");
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut c)
            .await
            .expect("DEL");
    }
}
