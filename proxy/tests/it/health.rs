//! The health listener holds under slow and numerous clients: a half-sent request is cut off
//! after `health_header_read_timeout_ms`, connections beyond `health_max_connections` are
//! closed at once, and `/healthz` answers again as soon as slots free up.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{eventually, redis_url, Origin, TestProxy};

/// `GET /healthz` on a fresh connection; `None` when the listener closed it without answering.
async fn try_healthz(addr: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let head = String::from_utf8_lossy(&buf);
    head.split(' ').nth(1)?.parse().ok()
}

/// Read until the peer closes the connection (or resets it), failing after 20 s.
async fn until_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => panic!("the listener kept a stalled connection open"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_is_cut_off_while_others_are_served() {
    let origin = Origin::start().await;
    let mut p = TestProxy::start_with(
        "health-slow",
        &[origin.addr],
        &redis_url(),
        "health_header_read_timeout_ms = 500",
        "",
    )
    .await;
    let mut slow = TcpStream::connect(p.health).await.expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: h\r\n")
        .await
        .expect("half a request");
    // Meanwhile everyone else is served.
    assert_eq!(try_healthz(p.health).await, Some(200));
    until_closed(&mut slow).await;
    assert_eq!(try_healthz(p.health).await, Some(200));
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_and_the_listener_recovers() {
    let origin = Origin::start().await;
    let mut p = TestProxy::start_with(
        "health-cap",
        &[origin.addr],
        &redis_url(),
        "health_max_connections = 4\nhealth_header_read_timeout_ms = 3000",
        "",
    )
    .await;
    // Four clients that connect and say nothing hold every slot ...
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(p.health).await.expect("connect"));
    }
    // ... so a fifth is closed without an answer (accepts are served in order).
    assert_eq!(try_healthz(p.health).await, None);
    // Once they are gone (cut off by the header timeout), the endpoint answers again.
    for s in &mut idle {
        until_closed(s).await;
    }
    let status = eventually("/healthz to answer again", Duration::from_secs(20), || {
        try_healthz(p.health)
    })
    .await;
    assert_eq!(status, 200);
    p.cleanup().await;
}
