//! TLS termination on `[proxy] tls_listen`: handshakes, SNI, certificate reload, HTTP/2 by
//! ALPN and its flood limits, HTTPS upstreams. Certificates come from a CA made in the test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::support::{eventually, free_port, redis_url, send, Origin, TestProxy, BROWSER};

/// A CA made for one test, the certificates it issues, and a directory for their files.
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

/// One issued certificate.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Pki {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = params.self_signed(&ca_key).expect("CA certificate");
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            ca,
            ca_key,
        }
    }

    pub fn issue(&self, names: &[&str]) -> Issued {
        self.issue_until(names, None)
    }

    pub fn issue_until(&self, names: &[&str], not_after: Option<(i32, u8, u8)>) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        if let Some((y, m, d)) = not_after {
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("leaf certificate");
        Issued {
            // The chain file: leaf, then the CA (a chain is allowed).
            cert_pem: format!("{}{}", cert.pem(), self.ca.pem()),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Write a file the way deploy tools replace certificates: a new file renamed over the old.
    pub fn write(&self, file: &str, content: &str) -> String {
        let tmp = self.path(&format!("{file}.tmp"));
        std::fs::write(&tmp, content).expect("write temp file");
        let path = self.path(file);
        std::fs::rename(&tmp, &path).expect("rename into place");
        path.to_string_lossy().into_owned()
    }

    pub fn install(&self, stem: &str, issued: &Issued) -> (String, String) {
        (
            self.write(&format!("{stem}.crt"), &issued.cert_pem),
            self.write(&format!("{stem}.key"), &issued.key_pem),
        )
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn client(&self, alpn: &[&[u8]]) -> TlsConnector {
        self.client_with(alpn, &[&rustls::version::TLS13, &rustls::version::TLS12])
    }

    pub fn client_with(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca.der().to_vec()))
            .expect("CA into roots");
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

pub async fn tls_connect(
    connector: &TlsConnector,
    addr: SocketAddr,
    sni: &str,
) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr)
        .await
        .expect("connect to TLS listener");
    connector
        .connect(ServerName::try_from(sni.to_string()).expect("name"), tcp)
        .await
        .expect("TLS handshake")
}

pub fn served_cert(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a server certificate")
        .to_vec()
}

/// One request over HTTP/1.1 on an established TLS stream.
pub async fn h1_get(stream: TlsStream<TcpStream>, path: &str) -> (u16, http::HeaderMap, Bytes) {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", "test.local");
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

/// `tls_listen` and the certificate keys for [`TestProxy::start_with`].
pub fn tls_keys(
    port: u16,
    default: &(String, String),
    more: &[(&(String, String), &[&str])],
) -> String {
    let mut keys = format!(
        "tls_listen = \"127.0.0.1:{port}\"\ntls_cert_path = \"{}\"\ntls_key_path = \"{}\"\n",
        default.0, default.1
    );
    for ((cert, key), names) in more {
        let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
        keys.push_str(&format!(
            "[[proxy.tls_certs]]\ncert_path = \"{cert}\"\nkey_path = \"{key}\"\nserver_names = [{}]\n",
            names.join(", ")
        ));
    }
    keys
}

pub fn tls_addr(p: &TestProxy) -> SocketAddr {
    p.proxy
        .as_ref()
        .and_then(|p| p.tls_addr())
        .expect("a TLS listener")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_handshake_sni_picks_the_certificate_and_proto_is_https() {
    let origin = Origin::start().await;
    let pki = Pki::new("sni");
    let default = pki.issue_until(&["default.test"], Some((2030, 1, 2)));
    let other = pki.issue(&["b.test", "*.wild.test"]);
    let default_files = pki.install("default", &default);
    let other_files = pki.install("other", &other);
    let keys = tls_keys(
        free_port(),
        &default_files,
        &[(&other_files, &["b.test", "*.wild.test"])],
    );
    let mut p = TestProxy::start_with("tls_sni", &[origin.addr], &redis_url(), &keys, "").await;
    let addr = tls_addr(&p);
    let client = pki.client(&[b"http/1.1"]);

    let s = tls_connect(&client, addr, "default.test").await;
    assert_eq!(
        s.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(served_cert(&s), default.der);
    let (status, headers, body) = h1_get(s, "/hello").await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"origin ok");
    assert_eq!(
        origin.last().header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    let id = headers["x-request-id"].to_str().expect("id").to_string();
    let entry = p.entry_for(&id).await;
    assert_eq!(entry["proto"], "http/1.1");
    assert_eq!(entry["status"], "200");

    let s = tls_connect(&client, addr, "b.test").await;
    assert_eq!(
        served_cert(&s),
        other.der,
        "SNI b.test gets its own certificate"
    );
    let s = tls_connect(&client, addr, "x.wild.test").await;
    assert_eq!(
        served_cert(&s),
        other.der,
        "a wildcard name matches one label"
    );

    // The cleartext listener still says http.
    let r = p.get("/plain", BROWSER).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        origin.last().header("x-forwarded-proto").as_deref(),
        Some("http")
    );

    // Each certificate's expiry is exported.
    let metrics = send(p.health, "GET", "/metrics", &[]).await.body;
    let line = format!(
        "watchpost_proxy_tls_cert_expiry_seconds{{cert=\"{}\"}} 1893542400",
        default_files.0
    );
    assert!(metrics.contains(&line), "{line} in {metrics}");
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_is_ecdhe_with_aead_and_tls11_is_refused() {
    let origin = Origin::start().await;
    let pki = Pki::new("v12");
    let files = pki.install("c", &pki.issue(&["v12.test"]));
    let keys = tls_keys(free_port(), &files, &[]);
    let mut p = TestProxy::start_with("tls_v12", &[origin.addr], &redis_url(), &keys, "").await;
    let addr = tls_addr(&p);
    let client = pki.client_with(&[], &[&rustls::version::TLS12]);
    let s = tls_connect(&client, addr, "v12.test").await;
    let conn = s.get_ref().1;
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let suite = format!(
        "{:?}",
        conn.negotiated_cipher_suite().expect("suite").suite()
    );
    assert!(
        suite.starts_with("TLS_ECDHE_")
            && (suite.contains("_GCM_") || suite.contains("CHACHA20_POLY1305")),
        "{suite}"
    );
    let (status, _, _) = h1_get(s, "/").await;
    assert_eq!(status, 200);

    // A TLS 1.1 ClientHello (record version 3.1, client_version 3.2) gets an alert, never a
    // ServerHello.
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(&tls11_client_hello())
        .await
        .expect("write hello");
    let mut buf = [0u8; 5];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap_or(0);
    assert!(
        n == 0 || buf[0] == 0x15,
        "alert or close, got {:?}",
        &buf[..n]
    );
    p.cleanup().await;
}

/// A TLS 1.2 ClientHello for `sni` offering only `suites`, with the extensions an ECDHE
/// handshake needs (groups X25519 and P-256, uncompressed points, ECDSA/RSA signatures).
fn tls12_client_hello(sni: &str, suites: &[u16]) -> Vec<u8> {
    fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }
    let mut exts = Vec::new();
    let name = sni.as_bytes();
    let mut server_name = ((name.len() + 3) as u16).to_be_bytes().to_vec();
    server_name.push(0); // host_name
    server_name.extend_from_slice(&(name.len() as u16).to_be_bytes());
    server_name.extend_from_slice(name);
    ext(&mut exts, 0x0000, &server_name);
    ext(&mut exts, 0x000a, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]); // x25519, secp256r1
    ext(&mut exts, 0x000b, &[0x01, 0x00]); // uncompressed points
                                           // ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256
    ext(
        &mut exts,
        0x000d,
        &[0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01],
    );
    ext(&mut exts, 0x0017, &[]); // extended_master_secret
    ext(&mut exts, 0xff01, &[0x00]); // renegotiation_info

    let mut body = vec![0x03, 0x03]; // client_version TLS 1.2
    body.extend_from_slice(&[9u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        body.extend_from_slice(&s.to_be_bytes());
    }
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Send a ClientHello; true when the server answers with a ServerHello.
async fn server_hello(addr: SocketAddr, hello: &[u8]) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(hello).await.expect("write hello");
    let mut head = [0u8; 6];
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_exact(&mut head))
        .await
        .expect("an answer or a close");
    // A handshake record whose first message is ServerHello (2); else an alert or a close.
    read.is_ok() && head[0] == 0x16 && head[5] == 0x02
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_refuses_suites_without_ecdhe_or_aead() {
    let origin = Origin::start().await;
    let pki = Pki::new("suites");
    let files = pki.install("c", &pki.issue(&["suites.test"]));
    let keys = tls_keys(free_port(), &files, &[]);
    let mut p = TestProxy::start_with("tls_suites", &[origin.addr], &redis_url(), &keys, "").await;
    let addr = tls_addr(&p);
    // The same hello with ECDHE + AES-GCM (ECDSA and RSA certificates) is answered, so a
    // refusal below is about the suites, not the hello.
    assert!(
        server_hello(addr, &tls12_client_hello("suites.test", &[0xc02b, 0xc02f])).await,
        "ECDHE with AES-GCM is accepted"
    );
    for (what, suites) in [
        // TLS_RSA_WITH_AES_128_GCM_SHA256, TLS_RSA_WITH_AES_256_GCM_SHA384,
        // TLS_DHE_RSA_WITH_AES_128_GCM_SHA256: AEAD, but no ECDHE (no forward secrecy or
        // finite-field DH).
        ("AEAD without ECDHE", &[0x009c, 0x009d, 0x009e][..]),
        // TLS_ECDHE_{ECDSA,RSA}_WITH_AES_128_CBC_SHA(256): ECDHE, but CBC.
        ("ECDHE with CBC", &[0xc009, 0xc013, 0xc023, 0xc027][..]),
        // TLS_RSA_WITH_AES_128_CBC_SHA, TLS_RSA_WITH_3DES_EDE_CBC_SHA, TLS_RSA_WITH_RC4_128_SHA.
        ("legacy", &[0x002f, 0x000a, 0x0005][..]),
    ] {
        assert!(
            !server_hello(addr, &tls12_client_hello("suites.test", suites)).await,
            "{what} is refused"
        );
    }
    p.cleanup().await;
}

/// A minimal TLS 1.1 ClientHello offering only CBC suites.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0x00, 0x2f, 0x00, 0x35]); // AES-CBC suites
    body.extend_from_slice(&[0x01, 0x00]); // compression: null
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x01];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_and_an_invalid_pair_is_refused() {
    let origin = Origin::start().await;
    let pki = Pki::new("reload");
    let first = pki.issue(&["reload.test"]);
    let files = pki.install("site", &first);
    let keys = tls_keys(free_port(), &files, &[]);
    let mut p = TestProxy::start_with("tls_reload", &[origin.addr], &redis_url(), &keys, "").await;
    let addr = tls_addr(&p);
    let client = pki.client(&[]);
    assert_eq!(
        served_cert(&tls_connect(&client, addr, "reload.test").await),
        first.der
    );

    // Replaced on disk (renamed over): new connections get the new one within 10 s.
    let second = pki.issue(&["reload.test"]);
    pki.install("site", &second);
    eventually(
        "the replaced certificate",
        Duration::from_secs(10),
        || async {
            (served_cert(&tls_connect(&client, addr, "reload.test").await) == second.der)
                .then_some(())
        },
    )
    .await;

    // A certificate whose key is another one's: refused, logged, counted; the old one stays.
    let third = pki.issue(&["reload.test"]);
    pki.write("site.crt", &third.cert_pem);
    eventually(
        "the refused pair to be counted",
        Duration::from_secs(10),
        || async { (p.metrics().tls_reload_failures.get() >= 1).then_some(()) },
    )
    .await;
    let s = tls_connect(&client, addr, "reload.test").await;
    assert_eq!(
        served_cert(&s),
        second.der,
        "the last valid pair keeps serving"
    );
    let (status, _, _) = h1_get(s, "/").await;
    assert_eq!(status, 200);
    p.cleanup().await;
}

#[test]
fn invalid_certificate_files_stop_the_start_with_a_clear_error() {
    let pki = Pki::new("bad");
    let a = pki.issue(&["a.test"]);
    let b = pki.issue(&["b.test"]);
    let cert = pki.write("a.crt", &a.cert_pem);
    let key = pki.write("b.key", &b.key_pem);
    let text = crate::support::config_text_with(
        &["127.0.0.1:9".parse().expect("addr")],
        &redis_url(),
        "wpt:tls_bad:",
        &format!(
            "tls_listen = \"127.0.0.1:{}\"\ntls_cert_path = \"{cert}\"\ntls_key_path = \"{key}\"\n",
            free_port()
        ),
        "",
    );
    let settings = watchpost_proxy::Settings::load_str(&text, None, &[]).expect("parses");
    let Err(e) = watchpost_proxy::server::check_tls(&settings, None) else {
        panic!("a mismatched pair is refused")
    };
    let msg = e.to_string();
    assert!(
        msg.contains("proxy.tls_cert_path") && msg.contains("do not belong together"),
        "{msg}"
    );
    let Err(e) = watchpost_proxy::start(settings, watchpost_proxy::StopOn::Handle) else {
        panic!("start refuses it too")
    };
    assert!(e.to_string().contains("do not belong together"), "{e}");
}

/// An HTTPS origin answering 200 `tls origin ok` with `issued`'s certificate.
pub struct TlsOrigin {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsOrigin {
    pub async fn start(issued: &Issued) -> Self {
        let chain = rustls_pemfile::certs(&mut issued.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("chain");
        let key = rustls_pemfile::private_key(&mut issued.key_pem.as_bytes())
            .expect("key pem")
            .expect("a key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind TLS origin");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from_static(b"tls origin ok")),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for TlsOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_is_verified_against_the_configured_ca() {
    let pki = Pki::new("upstream");
    let origin = TlsOrigin::start(&pki.issue(&["origin.test"])).await;
    let ca = pki.write("ca.pem", &pki.ca_pem());
    let keys = format!(
        "upstream_tls = true\nupstream_sni = \"origin.test\"\nupstream_ca_path = \"{ca}\"\n"
    );
    let mut p = TestProxy::start_with("tls_up", &[origin.addr], &redis_url(), &keys, "").await;
    let r = p.get("/", BROWSER).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body, "tls origin ok");
    p.cleanup().await;

    // The same origin, checked against another CA: refused, 502 envelope, logged and counted.
    let other = Pki::new("other");
    let wrong = other.write("ca.pem", &other.ca_pem());
    let keys = format!(
        "upstream_tls = true\nupstream_sni = \"origin.test\"\nupstream_ca_path = \"{wrong}\"\n"
    );
    let mut p = TestProxy::start_with("tls_up_bad", &[origin.addr], &redis_url(), &keys, "").await;
    let r = p.get("/", BROWSER).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.json()["error"]["code"], "BAD_GATEWAY");
    assert_eq!(
        r.json()["error"]["message"],
        "upstream TLS handshake failed"
    );
    let id = r.header("x-request-id").expect("id").to_string();
    assert_eq!(p.entry_for(&id).await["status"], "502");
    assert_eq!(
        p.metrics()
            .upstream_errors
            .with_label_values(&["tls"])
            .get(),
        1
    );

    // And a name the certificate does not carry is refused too, with the right CA.
    p.cleanup().await;
    let keys = format!(
        "upstream_tls = true\nupstream_sni = \"elsewhere.test\"\nupstream_ca_path = \"{ca}\"\n"
    );
    let mut p = TestProxy::start_with("tls_up_name", &[origin.addr], &redis_url(), &keys, "").await;
    let r = p.get("/", BROWSER).await;
    assert_eq!(r.status, 502, "{r:?}");
    p.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_names_default_to_the_host_and_stay_verified_after_a_reload() {
    let pki = Pki::new("upnames");
    // Written as an IP address: that is the name verified (the certificate's IP name).
    let by_ip = TlsOrigin::start(&pki.issue(&["127.0.0.1"])).await;
    // A certificate for another name only.
    let other = TlsOrigin::start(&pki.issue(&["other.test"])).await;
    let ca = pki.write("ca.pem", &pki.ca_pem());
    let keys = format!("upstream_tls = true\nupstream_ca_path = \"{ca}\"\n");
    let mut p = TestProxy::start_with("tls_up_ip", &[by_ip.addr], &redis_url(), &keys, "").await;
    let r = p.get("/", BROWSER).await;
    assert_eq!((r.status, r.body.as_str()), (200, "tls origin ok"), "{r:?}");

    // Reloaded onto an upstream whose certificate does not name its address: refused.
    let text = crate::support::config_text_with(&[other.addr], &redis_url(), &p.prefix, &keys, "");
    let settings = watchpost_proxy::Settings::load_str(&text, None, &[]).expect("valid");
    let reloader = p.proxy.as_ref().expect("running").reloader();
    reloader.apply(&settings).await.expect("reload");
    let r = p.get("/", BROWSER).await;
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(
        r.json()["error"]["message"],
        "upstream TLS handshake failed"
    );
    p.cleanup().await;
}
