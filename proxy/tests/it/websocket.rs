//! WebSocket (HTTP/1.1 upgrade) pass-through: scored and rejectable before the upgrade, 101,
//! then bytes both ways, one access-log entry with status 101.

use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{redis_url, TestProxy, BROWSER};

/// A WebSocket server that echoes every message.
struct EchoOrigin {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl EchoOrigin {
    async fn start() -> Self {
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
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for EchoOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_passes_through_logged_once_with_101() {
    let origin = EchoOrigin::start().await;
    let mut p = TestProxy::start_with(
        "ws",
        &[origin.addr],
        &redis_url(),
        "",
        "[gateway]\nrisk_reject_threshold = 0.3\n",
    )
    .await;
    let mut req = format!("ws://{}/chat", p.addr)
        .into_client_request()
        .expect("request");
    for (k, v) in BROWSER {
        req.headers_mut()
            .insert(*k, v.parse().expect("header value"));
    }
    let (mut ws, resp) = tokio_tungstenite::client_async(
        req,
        tokio::net::TcpStream::connect(p.addr)
            .await
            .expect("connect"),
    )
    .await
    .expect("WebSocket handshake through the proxy");
    assert_eq!(resp.status().as_u16(), 101);
    let id = resp.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    for text in ["one", "two", "three"] {
        ws.send(Message::text(text)).await.expect("send");
        let back = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo in time")
            .expect("a message")
            .expect("not an error");
        assert_eq!(back, Message::text(text));
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .expect("send binary");
    let back = ws.next().await.expect("a message").expect("ok");
    assert_eq!(back, Message::binary(vec![0u8, 1, 2, 255]));

    // Logged at upgrade time, while the connection is still open.
    let entry = p.entry_for(&id).await;
    assert_eq!(entry["status"], "101");
    assert_eq!(entry["path"], "/chat");
    ws.close(None).await.expect("close");
    drop(ws);

    // A risky upgrade is rejected before it reaches the origin.
    let req = format!("ws://{}/chat", p.addr)
        .into_client_request()
        .expect("request");
    let err = tokio_tungstenite::client_async(
        req,
        tokio::net::TcpStream::connect(p.addr)
            .await
            .expect("connect"),
    )
    .await
    .expect_err("a bare client without browser headers scores high");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status().as_u16(), 403)
        }
        other => panic!("expected a 403 answer, got {other:?}"),
    }

    // Exactly one entry for the upgraded connection, even after it closed: a graceful
    // shutdown flushes everything the proxy logged.
    p.shutdown().await;
    let entries = p.entries().await;
    let with_id = entries
        .iter()
        .filter(|e| e.iter().any(|(k, v)| k == "request_id" && v == &id))
        .count();
    assert_eq!(with_id, 1, "{entries:?}");
    p.cleanup().await;
}
