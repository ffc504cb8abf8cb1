//! `watchpost-demo-upstream`: a tiny, fast HTTP origin for the quickstart and the load bench.
//! It answers every request with 200 and a small JSON document echoing what the proxy told it
//! (`X-Client-IP`, `X-Client-Country`, `X-Risk-Score`, `X-Request-Id`, `X-Forwarded-For`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use clap::Parser;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A demo origin that echoes the headers Watchpost adds.
#[derive(Debug, Parser)]
#[command(name = "watchpost-demo-upstream", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = serde_json::json!({
        "ok": true,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "client_ip": header(&req, "x-client-ip"),
        "client_country": header(&req, "x-client-country"),
        "risk_score": header(&req, "x-risk-score"),
        "request_id": header(&req, "x-request-id"),
        "forwarded_for": header(&req, "x-forwarded-for"),
    });
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "watchpost-demo-upstream: cannot listen on {}: {e}",
                args.listen
            );
            return ExitCode::FAILURE;
        }
    };
    eprintln!("watchpost-demo-upstream: listening on {}", args.listen);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("watchpost-demo-upstream: accept failed: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}
