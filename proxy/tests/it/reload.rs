//! SIGHUP reloads the upstream list and the risk settings without dropping connections; an
//! invalid new file is refused and the running configuration stays.

use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{config_text, eventually, redis_url, send, unique_prefix, Origin, BROWSER};

const BIN: &str = env!("CARGO_BIN_EXE_watchpost-proxy");

fn listen_of(text: &str) -> std::net::SocketAddr {
    text.lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("listen line")
        .parse()
        .expect("addr")
}

fn hup(pid: u32) {
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// One keep-alive request on an open connection; returns the status.
async fn keepalive_get(c: &mut tokio::net::TcpStream) -> u16 {
    let mut req = "GET /ka HTTP/1.1\r\nHost: test.local\r\n".to_string();
    for (k, v) in BROWSER {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    c.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    // The origin answers `origin ok` with a Content-Length: read until the body is complete.
    while !buf.ends_with(b"origin ok") {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut chunk))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(n > 0, "the keep-alive connection was closed");
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf[9..12])
        .parse()
        .expect("status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_replaces_the_upstream_list_and_refuses_an_invalid_file() {
    let a = Origin::start().await;
    let b = Origin::start().await;
    let prefix = unique_prefix("sighup");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("watchpost.toml");
    let text = config_text(&[a.addr], &redis_url(), &prefix, "")
        .replace("work_stealing = true", "work_stealing = false");
    let listen = listen_of(&text);
    std::fs::write(&path, &text).expect("write config");
    let log_path = dir.path().join("proxy.log");
    let mut child = Command::new(BIN)
        .args(["--config", &path.display().to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .spawn()
        .expect("spawn the proxy");
    eventually("the binary to listen", Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(listen).await.ok()
    })
    .await;
    let mut kept = tokio::net::TcpStream::connect(listen)
        .await
        .expect("connect");
    assert_eq!(keepalive_get(&mut kept).await, 200);
    assert_eq!(send(listen, "GET", "/", BROWSER).await.status, 200);
    assert!(!a.received().is_empty() && b.received().is_empty());

    // The new list: only b.
    std::fs::write(
        &path,
        text.replace(&a.addr.to_string(), &b.addr.to_string()),
    )
    .expect("rewrite config");
    hup(child.id());
    eventually(
        "requests to reach the new upstream",
        Duration::from_secs(10),
        || async {
            assert_eq!(send(listen, "GET", "/", BROWSER).await.status, 200);
            (!b.received().is_empty()).then_some(())
        },
    )
    .await;
    let on_a = a.received().len();
    for _ in 0..4 {
        assert_eq!(send(listen, "GET", "/", BROWSER).await.status, 200);
    }
    assert_eq!(
        a.received().len(),
        on_a,
        "the old upstream gets nothing new"
    );
    // The connection opened before the reload still works.
    assert_eq!(keepalive_get(&mut kept).await, 200);

    // An invalid file is refused: the process keeps running with b.
    std::fs::write(
        &path,
        text.replace("upstreams = [", "upstreams = [\"nowhere\", "),
    )
    .expect("rewrite config");
    hup(child.id());
    let log = eventually(
        "the refusal to be logged",
        Duration::from_secs(10),
        || async {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            log.contains("reload refused").then_some(log)
        },
    )
    .await;
    assert!(log.contains("proxy.upstreams[0]"), "{log}");
    let on_b = b.received().len();
    assert_eq!(send(listen, "GET", "/", BROWSER).await.status, 200);
    assert_eq!(b.received().len(), on_b + 1);
    assert!(child.try_wait().expect("status").is_none(), "still running");

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
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
