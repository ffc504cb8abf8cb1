//! Client-IP resolution (SPEC §2): one pure function over the socket peer, every request
//! header instance and the gateway config.

use std::net::IpAddr;

use http::HeaderMap;

use crate::gateway::GatewayConfig;

/// Where the client IP came from (`ip_source` in the access log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpSource {
    Peer,
    XForwardedFor,
    Forwarded,
    XRealIp,
    /// A CDN header, by its lower-case name.
    Cdn(http::HeaderName),
}

impl IpSource {
    pub fn as_str(&self) -> &str {
        match self {
            IpSource::Peer => "peer",
            IpSource::XForwardedFor => "x-forwarded-for",
            IpSource::Forwarded => "forwarded",
            IpSource::XRealIp => "x-real-ip",
            IpSource::Cdn(h) => h.as_str(),
        }
    }
}

/// The outcome of client-IP resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIp {
    pub ip: IpAddr,
    pub source: IpSource,
    /// A forwarding header came from a peer that is not trusted (raises `spoofed_forwarded`).
    pub spoofed_forwarded: bool,
    /// A forwarding entry did not parse (raises `malformed_forwarded`).
    pub malformed_forwarded: bool,
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) becomes IPv4; everything else is unchanged.
pub fn normalize_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Decide the client IP of one request.
pub fn resolve_client_ip(peer: IpAddr, _headers: &HeaderMap, _config: &GatewayConfig) -> ClientIp {
    ClientIp {
        ip: normalize_ip(peer),
        source: IpSource::Peer,
        spoofed_forwarded: false,
        malformed_forwarded: false,
    }
}
