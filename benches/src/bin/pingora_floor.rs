//! `watchpost-pingora-floor`: the smallest Pingora reverse proxy — no client-IP resolution, no
//! GeoIP, no risk, no access log, no header rewriting, no metrics — configured like
//! watchpost-proxy's defaults (per-thread runtimes, no downstream modules). The gateway
//! comparison runs it beside nginx and watchpost-proxy to show which part of watchpost's cost
//! per request is the framework's and which is its own.

use std::net::SocketAddr;

use async_trait::async_trait;
use clap::Parser;
use pingora::modules::http::HttpModules;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

/// The same allocator as watchpost-proxy, so that the difference is watchpost's own work.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A bare Pingora proxy to one upstream (a measuring stick, not a product).
#[derive(Debug, Parser)]
#[command(name = "watchpost-pingora-floor")]
struct Args {
    /// Client-facing listener.
    #[arg(long)]
    listen: SocketAddr,
    /// The one upstream (`host:port`).
    #[arg(long)]
    upstream: SocketAddr,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

struct Floor {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Floor {
    type CTX = ();

    fn new_ctx(&self) {}

    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args = Args::parse();
    let conf = ServerConf {
        threads: args.threads,
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        Floor {
            upstream: args.upstream,
        },
        "pingora-floor",
    );
    proxy.add_tcp(&args.listen.to_string());
    server.add_service(proxy);
    eprintln!(
        "watchpost-pingora-floor: {} -> {}",
        args.listen, args.upstream
    );
    server.run_forever();
}
