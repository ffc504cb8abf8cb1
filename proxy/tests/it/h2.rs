//! HTTP/2: negotiated by ALPN on the TLS listener, h2c only when `[proxy] h2c = true`, and
//! the limits against the known floods, exercised with a raw-frame client.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{free_port, redis_url, Origin, TestProxy, BROWSER};
use crate::tls::{tls_addr, tls_connect, tls_keys, Pki};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn h2_get<T>(io: T, scheme: &str, path: &str) -> (u16, http::HeaderMap, Bytes)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let mut req = Request::get(format!("{scheme}://test.local{path}"));
    for (k, v) in BROWSER {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new()).expect("request"))
        .await
        .expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, headers, body)
}

async fn tls_proxy(name: &str, origin: &Origin, pki: &Pki, more: &str) -> TestProxy {
    let files = pki.install("h2", &pki.issue(&["h2.test"]));
    let keys = format!("{}{more}", tls_keys(free_port(), &files, &[]));
    TestProxy::start_with(name, &[origin.addr], &redis_url(), &keys, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_by_alpn_is_proxied_and_logged_as_h2() {
    let origin = Origin::start().await;
    let pki = Pki::new("h2");
    let mut p = tls_proxy("h2_alpn", &origin, &pki, "").await;
    let s = tls_connect(&pki.client(&[b"h2", b"http/1.1"]), tls_addr(&p), "h2.test").await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (status, headers, body) = h2_get(s, "https", "/over-h2").await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"origin ok");
    let seen = origin.last();
    assert_eq!(seen.path, "/over-h2");
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("https"));
    let id = headers["x-request-id"].to_str().expect("id").to_string();
    let entry = p.entry_for(&id).await;
    assert_eq!(entry["proto"], "h2");
    assert_eq!(entry["status"], "200");

    // A client offering only http/1.1 gets HTTP/1.1.
    let s = tls_connect(&pki.client(&[b"http/1.1"]), tls_addr(&p), "h2.test").await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_only_when_enabled() {
    let origin = Origin::start().await;
    let mut on =
        TestProxy::start_with("h2c_on", &[origin.addr], &redis_url(), "h2c = true\n", "").await;
    let tcp = TcpStream::connect(on.addr).await.expect("connect");
    let (status, headers, _) = h2_get(tcp, "http", "/h2c").await;
    assert_eq!(status, 200);
    let id = headers["x-request-id"].to_str().expect("id").to_string();
    assert_eq!(on.entry_for(&id).await["proto"], "h2");
    on.cleanup().await;

    // Off (the default): the HTTP/2 preface is not understood as HTTP/2.
    let mut off = TestProxy::start("h2c_off", &[origin.addr], "").await;
    let mut tcp = TcpStream::connect(off.addr).await.expect("connect");
    tcp.write_all(PREFACE).await.expect("preface");
    tcp.write_all(&frame(0x4, 0, 0, &[]))
        .await
        .expect("settings");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf)).await;
    // An HTTP/1.1 error or a close, never the server's HTTP/2 SETTINGS.
    assert!(
        buf.is_empty() || buf.starts_with(b"HTTP/1.1 4"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    off.cleanup().await;
}

/// One HTTP/2 frame: 24-bit length, type, flags, stream id.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A HEADERS block for `GET https://h2.test/` (HPACK: indexed :method GET, :scheme https,
/// :path /, literal :authority).
fn request_block() -> Vec<u8> {
    let mut b = vec![0x82, 0x87, 0x84, 0x41, 7];
    b.extend_from_slice(b"h2.test");
    b
}

/// Read frames until a GOAWAY arrives (returns its error code) or the connection closes
/// (returns `None`).
async fn goaway<R: AsyncReadExt + Unpin>(r: &mut R) -> Option<u32> {
    let read = async {
        loop {
            let mut head = [0u8; 9];
            if r.read_exact(&mut head).await.is_err() {
                return None;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if r.read_exact(&mut payload).await.is_err() {
                return None;
            }
            if head[3] == 0x7 && payload.len() >= 8 {
                return Some(u32::from_be_bytes([
                    payload[4], payload[5], payload[6], payload[7],
                ]));
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .expect("GOAWAY or close within 15 s")
}

const ENHANCE_YOUR_CALM: u32 = 0xb;

async fn raw_h2(p: &TestProxy, pki: &Pki) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut s = tls_connect(&pki.client(&[b"h2"]), tls_addr(p), "h2.test").await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    s.write_all(PREFACE).await.expect("preface");
    s.write_all(&frame(0x4, 0, 0, &[])).await.expect("settings");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_goaway() {
    let origin = Origin::start().await;
    let pki = Pki::new("reset");
    let mut p = tls_proxy(
        "h2_reset",
        &origin,
        &pki,
        "h2_max_pending_reset_streams = 10\n",
    )
    .await;
    let mut s = raw_h2(&p, &pki).await;
    // HEADERS (END_HEADERS) then RST_STREAM(CANCEL) at once, 1000 times, in large writes.
    let mut burst = Vec::new();
    for i in 0..1000u32 {
        let id = 2 * i + 1;
        burst.extend(frame(0x1, 0x4, id, &request_block()));
        burst.extend(frame(0x3, 0, id, &8u32.to_be_bytes()));
    }
    // The server may close while we are still writing; that is the expected outcome too.
    let _ = s.write_all(&burst).await;
    let _ = s.flush().await;
    let code = goaway(&mut s).await;
    assert_eq!(code, Some(ENHANCE_YOUR_CALM), "GOAWAY(ENHANCE_YOUR_CALM)");
    assert!(
        origin.received().len() < 1000,
        "the flood did not all reach the origin"
    );
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_gets_goaway() {
    let origin = Origin::start().await;
    let pki = Pki::new("cont");
    let mut p = tls_proxy("h2_cont", &origin, &pki, "").await;
    let mut s = raw_h2(&p, &pki).await;
    // HEADERS without END_HEADERS, then tiny CONTINUATION frames that never end the block.
    let mut burst = frame(0x1, 0, 1, &request_block());
    for _ in 0..10_000 {
        // A literal header without indexing: name "x" value "y".
        burst.extend(frame(0x9, 0, 1, &[0x00, 1, b'x', 1, b'y']));
    }
    let _ = s.write_all(&burst).await;
    let _ = s.flush().await;
    let code = goaway(&mut s).await;
    assert_eq!(code, Some(ENHANCE_YOUR_CALM), "GOAWAY(ENHANCE_YOUR_CALM)");
    assert!(
        origin.received().is_empty(),
        "the endless header block never reached the origin"
    );
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_are_bounded_in_settings() {
    let origin = Origin::start().await;
    let pki = Pki::new("streams");
    let mut p = tls_proxy(
        "h2_streams",
        &origin,
        &pki,
        "h2_max_concurrent_streams = 7\n",
    )
    .await;
    let mut s = raw_h2(&p, &pki).await;
    // The server's first frame is its SETTINGS: MAX_CONCURRENT_STREAMS (0x3) = 7.
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head))
        .await
        .expect("settings in time")
        .expect("read settings");
    assert_eq!(head[3], 0x4, "SETTINGS first");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.expect("payload");
    let settings: Vec<(u16, u32)> = payload
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    assert!(settings.contains(&(0x3, 7)), "{settings:?}");
    assert!(
        settings.iter().any(|(k, _)| *k == 0x6),
        "a header-list bound: {settings:?}"
    );
    p.cleanup().await;
}

/// How a flood of one frame, sent without ever reading, ended.
#[derive(Debug)]
enum FloodEnd {
    /// The proxy stopped reading: a write made no progress for a few seconds, after `sent`
    /// bytes.
    Stalled { sent: usize },
    /// The proxy closed the connection after `sent` bytes.
    Closed { sent: usize },
    /// Everything was written: the proxy read the whole flood.
    Unbounded,
}

/// Upper bound of a flood: more than all the kernel buffers on both sides can hold
/// (`tcp_rmem` max here is 32 MiB), so that reaching it means the proxy kept reading.
const FLOOD_BYTES: usize = 256 << 20;

/// Send `unit` (one frame) over and over on a prior-knowledge HTTP/2 connection whose
/// receive buffer is tiny, never reading what the proxy answers.
async fn flood(addr: std::net::SocketAddr, unit: &[u8]) -> (TcpStream, FloodEnd) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    // The smallest buffers the kernel allows: the proxy's answers back up at once.
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.set_send_buffer_size(4096).expect("SO_SNDBUF");
    let mut s = socket.connect(addr).await.expect("connect");
    s.write_all(PREFACE).await.expect("preface");
    s.write_all(&frame(0x4, 0, 0, &[])).await.expect("settings");
    let chunk: Vec<u8> = unit.repeat((64 << 10) / unit.len());
    let mut sent = 0;
    while sent < FLOOD_BYTES {
        match tokio::time::timeout(Duration::from_secs(3), s.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(_)) => return (s, FloodEnd::Closed { sent }),
            // Part of the chunk may be written: `sent` is a lower bound, which is all the
            // assertion needs.
            Err(_) => return (s, FloodEnd::Stalled { sent }),
        }
    }
    (s, FloodEnd::Unbounded)
}

/// The frames the proxy sent on a flooded connection: the answers to the flood only.
async fn answers(s: &mut TcpStream, want: u8, count: usize) {
    let mut seen = 0;
    let read = async {
        while seen < count {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await.expect("a frame");
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.expect("payload");
            match (head[3], head[4] & 0x1) {
                // The server's own SETTINGS, and WINDOW_UPDATE.
                (0x4, 0) | (0x8, _) => {}
                (kind, 0x1) if kind == want => seen += 1,
                // A SETTINGS ACK for our first SETTINGS, in a PING flood.
                (0x4, 0x1) => {}
                other => panic!("unexpected frame {other:?} during the flood"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the flood's answers in time");
}

/// SETTINGS and PING floods (CVE-2019-9515, CVE-2019-9512): the client sends frames that
/// each need an acknowledgement and never reads them. The h2 crate keeps one acknowledgement
/// pending at most and reads no further frame until it is written, so the proxy stops
/// reading the connection (or closes it) long before the flood ends, holds no growing queue,
/// and keeps answering other connections meanwhile.
async fn flood_is_bounded(name: &str, unit: Vec<u8>, ack_kind: u8) {
    let origin = Origin::start().await;
    let mut p = TestProxy::start_with(name, &[origin.addr], &redis_url(), "h2c = true\n", "").await;
    let (mut s, end) = flood(p.addr, &unit).await;
    let sent = match end {
        FloodEnd::Stalled { sent } | FloodEnd::Closed { sent } => sent,
        FloodEnd::Unbounded => panic!("the proxy read {FLOOD_BYTES} bytes of flood"),
    };
    // Whatever the kernel buffers held, far below the flood.
    assert!(sent < FLOOD_BYTES / 4, "{end:?}");

    // Another client is served while the flooding connection is stuck.
    let tcp = TcpStream::connect(p.addr).await.expect("connect");
    let (status, _, body) = h2_get(tcp, "http", "/during-flood").await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"origin ok");

    // The flood was answered, one acknowledgement per frame read (not dropped, not an error).
    if let FloodEnd::Stalled { .. } = end {
        answers(&mut s, ack_kind, 100).await;
    }
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_without_reading_is_bounded() {
    flood_is_bounded("h2_ping_flood", frame(0x6, 0, 0, b"floodfld"), 0x6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_flood_without_reading_is_bounded() {
    // SETTINGS_ENABLE_PUSH = 0: valid from a client, each frame needs an ACK.
    flood_is_bounded(
        "h2_settings_flood",
        frame(0x4, 0, 0, &[0, 0x2, 0, 0, 0, 0]),
        0x4,
    )
    .await;
}

/// Streams past `h2_max_concurrent_streams` are refused (RST_STREAM REFUSED_STREAM), not
/// queued: with an upstream that never answers, seven requests stay in flight and the eighth,
/// sent in the same write, is refused while the others are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_past_max_concurrent_streams_is_refused() {
    // An upstream that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
        }
    });
    let mut p = TestProxy::start_with(
        "h2_refused",
        &[silent_addr],
        &redis_url(),
        "h2c = true\nh2_max_concurrent_streams = 7\n",
        "",
    )
    .await;
    let mut s = TcpStream::connect(p.addr).await.expect("connect");
    s.write_all(PREFACE).await.expect("preface");
    s.write_all(&frame(0x4, 0, 0, &[])).await.expect("settings");
    // The server's SETTINGS, acknowledged before the requests.
    let read_settings = async {
        loop {
            let (kind, flags, _, _) = read_frame(&mut s).await;
            if kind == 0x4 && flags & 0x1 == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_settings)
        .await
        .expect("the server's SETTINGS");
    let mut burst = frame(0x4, 0x1, 0, &[]);
    for i in 0..8u32 {
        // HEADERS with END_HEADERS and END_STREAM: a complete GET.
        burst.extend(frame(0x1, 0x5, 2 * i + 1, &request_block()));
    }
    s.write_all(&burst).await.expect("requests");
    let refused = async {
        loop {
            let (kind, _, stream, payload) = read_frame(&mut s).await;
            match kind {
                0x3 => {
                    let code = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                    return (stream, code);
                }
                0x7 => panic!("GOAWAY instead of a refused stream: {payload:?}"),
                _ => {}
            }
        }
    };
    let (stream, code) = tokio::time::timeout(Duration::from_secs(15), refused)
        .await
        .expect("a RST_STREAM in time");
    const REFUSED_STREAM: u32 = 0x7;
    assert_eq!(
        (stream, code),
        (15, REFUSED_STREAM),
        "the eighth stream is refused"
    );
    p.cleanup().await;
    holder.abort();
}

/// One frame: type, flags, stream id, payload.
async fn read_frame(s: &mut TcpStream) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.expect("a frame");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.expect("payload");
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    (head[3], head[4], stream, payload)
}
