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
