//! Request bodies stream through; `[proxy] max_body_bytes` answers 413 past it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::support::{redis_url, send_raw, TestProxy, BROWSER};

/// An origin that reads each request body to its end and answers with its length.
struct CountingOrigin {
    addr: SocketAddr,
    lengths: Arc<Mutex<Vec<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingOrigin {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let lengths: Arc<Mutex<Vec<usize>>> = Arc::default();
        let seen = lengths.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let seen = seen.clone();
                            async move {
                                let n = match req.into_body().collect().await {
                                    Ok(b) => b.to_bytes().len(),
                                    Err(_) => return Err("body broken"),
                                };
                                seen.lock().expect("lock").push(n);
                                Ok(http::Response::new(Full::new(Bytes::from(n.to_string()))))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            lengths,
            task,
        }
    }

    fn lengths(&self) -> Vec<usize> {
        self.lengths.lock().expect("lock").clone()
    }
}

impl Drop for CountingOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn head(method: &str, extra: &str) -> String {
    let mut h = format!("{method} /upload HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n");
    for (k, v) in BROWSER {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str(extra);
    h.push_str("\r\n");
    h
}

fn chunked(parts: &[usize]) -> String {
    let mut b = String::new();
    for n in parts {
        b.push_str(&format!("{n:x}\r\n{}\r\n", "a".repeat(*n)));
    }
    b.push_str("0\r\n\r\n");
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_past_max_body_bytes_get_413() {
    let origin = CountingOrigin::start().await;
    let mut p = TestProxy::start_with(
        "bodies",
        &[origin.addr],
        &redis_url(),
        "max_body_bytes = 1000\n",
        "",
    )
    .await;

    // Within the limit, both framings pass whole.
    let r = send_raw(
        p.addr,
        &format!(
            "{}{}",
            head("POST", "Content-Length: 1000\r\n"),
            "a".repeat(1000)
        ),
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "1000"));
    let r = send_raw(
        p.addr,
        &format!(
            "{}{}",
            head("POST", "Transfer-Encoding: chunked\r\n"),
            chunked(&[400, 600])
        ),
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "1000"));

    // Announced too large: refused before a byte is read; the origin sees nothing.
    let before = origin.lengths().len();
    let r = send_raw(p.addr, &head("POST", "Content-Length: 1001\r\n")).await;
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.json()["error"]["code"], "PAYLOAD_TOO_LARGE");
    let id = r.header("x-request-id").expect("id").to_string();
    assert_eq!(p.entry_for(&id).await["status"], "413");
    assert_eq!(origin.lengths().len(), before);

    // Chunked, of no announced length: refused once the count passes the limit.
    let r = send_raw(
        p.addr,
        &format!(
            "{}{}",
            head("POST", "Transfer-Encoding: chunked\r\n"),
            chunked(&[600, 600])
        ),
    )
    .await;
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.json()["error"]["code"], "PAYLOAD_TOO_LARGE");
    assert!(
        origin.lengths().iter().all(|n| *n <= 1000),
        "no body past the limit reached the origin whole: {:?}",
        origin.lengths()
    );
    p.cleanup().await;
}

/// An origin that counts each request body as it streams in, keeping none of it, and
/// answers with the count.
async fn streaming_origin() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async {
                        let mut body = req.into_body();
                        let mut n = 0u64;
                        while let Some(frame) = body.frame().await {
                            match frame {
                                Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                                Err(_) => return Err("body broken"),
                            }
                        }
                        Ok(http::Response::new(Full::new(Bytes::from(n.to_string()))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

/// A process's peak resident memory (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("VmHWM")
}

/// POST `len` zero bytes with a Content-Length; the status line and the body of the answer.
async fn upload(addr: SocketAddr, len: u64) -> (bool, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.write_all(head("POST", &format!("Content-Length: {len}\r\n")).as_bytes())
        .await
        .expect("head");
    let chunk = vec![0u8; 256 << 10];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        c.write_all(&chunk[..n]).await.expect("body");
        left -= n as u64;
    }
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).await.expect("answer");
    let text = String::from_utf8_lossy(&buf).to_string();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (text.starts_with("HTTP/1.1 200"), body)
}

/// A 1 GiB upload through the proxy binary: it arrives whole, and the proxy's peak resident
/// memory grows by far less than the body (a buffered body would add 1 GiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_upload_streams_with_flat_memory() {
    const GIB: u64 = 1 << 30;
    let (origin, task) = streaming_origin().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // No Redis needed: the access log retries in the background.
    let text = crate::support::config_text(
        &[origin],
        "redis://127.0.0.1:1/",
        "wpt:bodies:",
        "[risk]\nrate_limit = 1e12\n",
    );
    let listen: SocketAddr = text
        .lines()
        .find_map(|l| l.strip_prefix("listen = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("listen line")
        .parse()
        .expect("addr");
    let path = dir.path().join("watchpost.toml");
    std::fs::write(&path, &text).expect("write config");
    let mut proxy = std::process::Command::new(env!("CARGO_BIN_EXE_watchpost-proxy"))
        .args(["--config", &path.display().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the proxy");
    crate::support::eventually(
        "the proxy to listen",
        std::time::Duration::from_secs(20),
        || async { tokio::net::TcpStream::connect(listen).await.ok() },
    )
    .await;

    // Warm up (runtimes, pools, buffers), then take the baseline.
    for _ in 0..4 {
        assert_eq!(
            upload(listen, 16 << 20).await,
            (true, (16u64 << 20).to_string())
        );
    }
    let before = peak_rss(proxy.id());
    let answer = upload(listen, GIB).await;
    let after = peak_rss(proxy.id());
    let _ = proxy.kill();
    let _ = proxy.wait();
    task.abort();
    assert_eq!(
        answer,
        (true, GIB.to_string()),
        "the origin got the whole body"
    );
    assert!(
        after.saturating_sub(before) < 64 << 20,
        "peak resident memory went from {before} to {after} bytes over a 1 GiB upload"
    );
}
