//! Client-IP resolution (SPEC §2): one pure function over the socket peer, every request
//! header instance and the gateway config.
//!
//! Decisions beyond the letter of SPEC §2, so that the proxy, the docs and the tests agree:
//!
//! - **One header is believed.** `client_ip_header` names the forwarding header trusted hops
//!   set (`x-forwarded-for`, `forwarded` or `x-real-ip`, like nginx's `real_ip_header`); the
//!   other two are never read, so a client cannot make its own `X-Forwarded-For` win behind a
//!   hop that only sets `X-Real-IP`.
//! - **`direct` mode never raises `spoofed_forwarded`.** The operator has said no proxy sits
//!   in front, so forwarding headers are never consulted and cannot move a client's identity;
//!   flagging them would only penalise clients behind ordinary forward proxies (which add
//!   `X-Forwarded-For` in good faith).
//! - **`spoofed_forwarded`** is raised when a header the config would believe from some peer
//!   arrives from a peer that may not set it: the `client_ip_header` from a peer outside
//!   `trusted_cidrs` (and outside `cdn_cidrs` in `cdn` mode: a CDN's own forwarding header is
//!   not an attack, merely not believed), or in `cdn` mode a configured CDN header from a peer
//!   outside `cdn_cidrs` (also when that peer is a trusted hop: a hop that is not the CDN only
//!   passes on what the client wrote). Headers no rule believes (the other forwarding headers,
//!   CDN headers outside `cdn` mode) never raise it. A header counts when present, whatever
//!   its value (an empty line counts).
//! - **`cdn` mode**: when the peer is in `cdn_cidrs`, the first configured CDN header whose
//!   instances, split on commas, hold exactly one valid address names the client. A present
//!   header that does not (garbage, two addresses, two lines) is skipped and raises
//!   `malformed_forwarded`, and resolution continues with the next header, then the `proxy`
//!   rules (which look at `trusted_cidrs` only). A CDN header from any other peer is ignored.
//! - **The walk** (right to left, skipping trusted addresses) reads every instance of the
//!   configured header. When the walk yields no address (its nearest entry is malformed,
//!   `unknown`, an obfuscated id, or a `Forwarded` element without `for=`), the client is the
//!   peer and `ip_source` is `peer`.
//! - **Malformed entries**: anything that is not an IP address, optionally with a port
//!   (`1.2.3.4:5678`, `[2001:db8::1]:443`, bare `2001:db8::1`), including empty or
//!   whitespace-only entries (`a,,b`, a trailing comma, an empty header line), bytes that are
//!   not UTF-8, and `unknown` in `X-Forwarded-For` / `X-Real-IP` (only RFC 7239 gives
//!   `unknown` a meaning). Entries left of the point where the walk stops are never looked at.
//! - **`Forwarded`** follows RFC 7239 with some leniency about what a `for=` node looks like
//!   (unquoted `1.2.3.4:80` and bare IPv6 are accepted). `unknown` and obfuscated identifiers
//!   (`_hidden`, also as ports: `"1.2.3.4:_p"`) end the walk without `malformed_forwarded`.
//!   Empty elements, a pair without `=`, an unterminated quoted-string, a repeated `for=` or a
//!   `for=` that does not parse are malformed. A quoted-string never spans header lines.
//! - **A malformed element never swallows its neighbours.** A quoted-string is one only when
//!   its closing quote is followed (after optional whitespace) by `;`, `,` or the end of the
//!   line; otherwise the opening quote is unterminated and its element ends at the next `,`.
//!   So `for="x, for=198.51.100.7` — a client's stray quote, then the element a trusted hop
//!   appended — reads as a malformed element and `for=198.51.100.7`, even when the hop's own
//!   value is quoted (`for="x, for="[2001:db8::7]:4711"`).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use http::header::GetAll;
use http::{HeaderMap, HeaderValue};

use crate::gateway::{ClientIpHeader, GatewayConfig, IpMode};

/// The `X-Forwarded-For` header name (lower-case, as `http` spells header names).
pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
/// The `X-Real-IP` header name.
pub const X_REAL_IP: &str = "x-real-ip";

/// Where the client IP came from (`ip_source` in the access log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpSource {
    /// The socket peer.
    Peer,
    /// The `X-Forwarded-For` chain.
    XForwardedFor,
    /// The RFC 7239 `Forwarded` chain.
    Forwarded,
    /// The `X-Real-IP` header.
    XRealIp,
    /// A CDN header, by its lower-case name.
    Cdn(http::HeaderName),
}

impl IpSource {
    /// The `ip_source` value written to the access log.
    pub fn as_str(&self) -> &str {
        match self {
            IpSource::Peer => "peer",
            IpSource::XForwardedFor => X_FORWARDED_FOR,
            IpSource::Forwarded => "forwarded",
            IpSource::XRealIp => X_REAL_IP,
            IpSource::Cdn(h) => h.as_str(),
        }
    }

    /// [`Self::as_str`] for an access-log entry: borrowed from a constant except for a CDN
    /// header's name.
    pub fn to_text(&self) -> std::borrow::Cow<'static, str> {
        use std::borrow::Cow;
        match self {
            IpSource::Peer => Cow::Borrowed("peer"),
            IpSource::XForwardedFor => Cow::Borrowed(X_FORWARDED_FOR),
            IpSource::Forwarded => Cow::Borrowed("forwarded"),
            IpSource::XRealIp => Cow::Borrowed(X_REAL_IP),
            IpSource::Cdn(h) => Cow::Owned(h.as_str().to_string()),
        }
    }
}

/// The outcome of client-IP resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIp {
    /// The client address, normalised (never an IPv4-mapped IPv6 address).
    pub ip: IpAddr,
    /// Where `ip` came from.
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

/// Decide the client IP of one request (SPEC §2; the module docs list the finer decisions).
///
/// `headers` must be the request headers as received, every instance of every header. Header
/// bytes are read in place; the only allocation is a small vector when the chain comes from a
/// `Forwarded` header.
pub fn resolve_client_ip(peer: IpAddr, headers: &HeaderMap, config: &GatewayConfig) -> ClientIp {
    resolve(peer, headers, config, &mut |_| {})
}

/// The `X-Forwarded-For` value to send upstream, as the proxy sees the chain.
///
/// It lists, left to right: the client, the trusted hops between the client and the peer
/// that reported it (only those the walk passed), and the peer. So:
///
/// - client from the socket (`direct` mode, untrusted peer, no usable header): `peer`;
/// - client from a CDN header: `client, peer`;
/// - client from `X-Forwarded-For`, `Forwarded` or `X-Real-IP`: the addresses walked, from the
///   client to the nearest hop, then `peer`.
///
/// Entries left of the client are dropped: they were written by the client itself and nobody
/// vouches for them, so an app that reads the leftmost entry still gets the client. Every entry
/// is a normalised address without port, so the header is always well formed. Call this with
/// the headers as received, before the proxy removes the incoming `X-Forwarded-For`.
pub fn rewritten_forwarded_for(
    peer: IpAddr,
    headers: &HeaderMap,
    config: &GatewayConfig,
) -> String {
    resolve_with_forwarded_for(peer, headers, config).1
}

/// [`resolve_client_ip`] and [`rewritten_forwarded_for`] in one pass over the headers.
pub fn resolve_with_forwarded_for(
    peer: IpAddr,
    headers: &HeaderMap,
    config: &GatewayConfig,
) -> (ClientIp, String) {
    let mut hops: Vec<IpAddr> = Vec::new();
    let client = resolve(peer, headers, config, &mut |ip| hops.push(ip));
    let peer = normalize_ip(peer);
    // Room for a few IPv4 addresses; IPv6 chains grow the string once or twice.
    let mut out = String::with_capacity(16 * (hops.len() + 2));
    let mut push = |ip: IpAddr| {
        if !out.is_empty() {
            out.push_str(", ");
        }
        // Writing to a String cannot fail.
        let _ = write!(out, "{ip}");
    };
    match client.source {
        IpSource::Peer => {}
        IpSource::Cdn(_) => push(client.ip),
        // The walk reports hops nearest first and stops at the client.
        IpSource::XForwardedFor | IpSource::Forwarded | IpSource::XRealIp => {
            hops.iter().rev().for_each(|&ip| push(ip));
        }
    }
    push(peer);
    (client, out)
}

/// The resolution proper; `on_hop` sees every valid address the walk passes, nearest first.
fn resolve<F: FnMut(IpAddr)>(
    peer: IpAddr,
    headers: &HeaderMap,
    config: &GatewayConfig,
    on_hop: &mut F,
) -> ClientIp {
    let peer = normalize_ip(peer);
    let from_peer = |spoofed_forwarded, malformed_forwarded| ClientIp {
        ip: peer,
        source: IpSource::Peer,
        spoofed_forwarded,
        malformed_forwarded,
    };
    let cdn = match config.ip_mode {
        IpMode::Direct => return from_peer(false, false),
        IpMode::Proxy => false,
        IpMode::Cdn => true,
    };
    let trusted = config.is_trusted(peer);
    let cdn_peer = cdn && config.is_cdn(peer);
    let header = config.client_ip_header;
    let has_cdn_header = cdn && config.cdn_headers.iter().any(|h| headers.contains_key(h));
    // A header this config believes from some peer, sent by a peer that may not set it.
    let spoofed = (has_cdn_header && !cdn_peer)
        || (!trusted && !cdn_peer && headers.contains_key(header.as_str()));

    let mut malformed = false;
    if cdn_peer {
        for name in &config.cdn_headers {
            match cdn_header(headers.get_all(name)) {
                CdnHeader::Absent => {}
                CdnHeader::Unusable => malformed = true,
                CdnHeader::Ip(ip) => {
                    return ClientIp {
                        ip,
                        source: IpSource::Cdn(name.clone()),
                        spoofed_forwarded: false,
                        malformed_forwarded: malformed,
                    }
                }
            }
        }
    }
    if !trusted || !headers.contains_key(header.as_str()) {
        return from_peer(spoofed, malformed);
    }

    let values = headers.get_all(header.as_str());
    let (source, walked) = match header {
        ClientIpHeader::XForwardedFor => (
            IpSource::XForwardedFor,
            walk(list_entries_rev(values), config, on_hop),
        ),
        ClientIpHeader::Forwarded => (
            IpSource::Forwarded,
            walk(forwarded_entries_rev(values), config, on_hop),
        ),
        ClientIpHeader::XRealIp => (
            IpSource::XRealIp,
            walk(list_entries_rev(values), config, on_hop),
        ),
    };
    let malformed = malformed || walked.malformed;
    match walked.client {
        Some(ip) => ClientIp {
            ip,
            source,
            spoofed_forwarded: spoofed,
            malformed_forwarded: malformed,
        },
        None => from_peer(spoofed, malformed),
    }
}

/// One hop of a forwarding chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// A valid address, normalised, port stripped.
    Addr(IpAddr),
    /// A well-formed hop that hides its address (RFC 7239 `unknown`, `_obfuscated`, or an
    /// element without `for=`): the walk ends without blame.
    Opaque,
    /// Does not parse.
    Malformed,
}

/// Where a walk ended.
struct Walked {
    /// The client: the first untrusted address, else the last valid address walked.
    client: Option<IpAddr>,
    malformed: bool,
}

/// Walk a chain given nearest hop first: skip trusted addresses, stop at the first untrusted
/// one; an opaque or malformed entry ends the walk at the last valid address walked.
fn walk<F: FnMut(IpAddr)>(
    entries: impl Iterator<Item = Entry>,
    config: &GatewayConfig,
    on_hop: &mut F,
) -> Walked {
    let mut last = None;
    for entry in entries {
        match entry {
            Entry::Addr(ip) => {
                on_hop(ip);
                last = Some(ip);
                if !config.is_trusted(ip) {
                    break;
                }
            }
            Entry::Opaque => break,
            Entry::Malformed => {
                return Walked {
                    client: last,
                    malformed: true,
                }
            }
        }
    }
    // Also covers an all-trusted chain: `last` is then its leftmost entry.
    Walked {
        client: last,
        malformed: false,
    }
}

/// The entries of a comma-separated list header (`X-Forwarded-For`, `X-Real-IP`), every
/// instance joined in order, yielded right to left without copying.
fn list_entries_rev<'a>(values: GetAll<'a, HeaderValue>) -> impl Iterator<Item = Entry> + 'a {
    values
        .into_iter()
        .rev()
        .flat_map(|v| v.as_bytes().rsplit(|&b| b == b','))
        .map(|e| parse_node(e, Dialect::List))
}

/// The `for=` nodes of every `Forwarded` element, every instance joined in order, yielded
/// right to left. Quoted-strings may hold commas, so elements are found by a forward scan;
/// this is the one path that allocates (a small vector, and only for this header).
fn forwarded_entries_rev(values: GetAll<'_, HeaderValue>) -> impl Iterator<Item = Entry> {
    let mut entries = Vec::new();
    for value in values {
        entries.extend(SplitOutsideQuotes::new(value.as_bytes(), b',').map(forwarded_element));
    }
    entries.into_iter().rev()
}

/// What a CDN header holds.
enum CdnHeader {
    Absent,
    Ip(IpAddr),
    /// Present but not exactly one valid address.
    Unusable,
}

fn cdn_header(values: GetAll<'_, HeaderValue>) -> CdnHeader {
    let mut found = None;
    let mut present = false;
    for value in values {
        present = true;
        for entry in value.as_bytes().split(|&b| b == b',') {
            match (parse_node(entry, Dialect::List), found) {
                (Entry::Addr(ip), None) => found = Some(ip),
                _ => return CdnHeader::Unusable,
            }
        }
    }
    match (present, found) {
        (false, _) => CdnHeader::Absent,
        (true, Some(ip)) => CdnHeader::Ip(ip),
        (true, None) => CdnHeader::Unusable,
    }
}

/// Which syntax a node is read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// `X-Forwarded-For`, `X-Real-IP`, CDN headers: an address, optionally with a port.
    List,
    /// An RFC 7239 node: also `unknown`, `_obfuscated` names and `_obfuscated` ports.
    Forwarded,
}

/// Parse one node: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:443`, and in the `Forwarded` dialect `unknown` / `_id` names and `_id` ports.
fn parse_node(raw: &[u8], dialect: Dialect) -> Entry {
    let s = raw.trim_ascii();
    if let Some(rest) = s.strip_prefix(b"[") {
        let Some(close) = rest.iter().position(|&b| b == b']') else {
            return Entry::Malformed;
        };
        let port_ok = match &rest[close + 1..] {
            [] => true,
            [b':', port @ ..] => valid_port(port, dialect),
            _ => false,
        };
        return match parse_ascii::<Ipv6Addr>(&rest[..close]) {
            Some(v6) if port_ok => Entry::Addr(normalize_ip(IpAddr::V6(v6))),
            _ => Entry::Malformed,
        };
    }
    // A bare IPv6 address has colons too, so try the whole node before looking for a port.
    if let Some(ip) = parse_ascii::<IpAddr>(s) {
        return Entry::Addr(normalize_ip(ip));
    }
    let name = match s.iter().rposition(|&b| b == b':') {
        Some(colon) if valid_port(&s[colon + 1..], dialect) => &s[..colon],
        Some(_) => return Entry::Malformed,
        None => s,
    };
    if let Some(v4) = parse_ascii::<Ipv4Addr>(name) {
        return Entry::Addr(IpAddr::V4(v4));
    }
    if dialect == Dialect::Forwarded
        && (name.eq_ignore_ascii_case(b"unknown") || is_obfuscated(name))
    {
        return Entry::Opaque;
    }
    Entry::Malformed
}

/// Parse bytes that should be ASCII; anything else (including non-UTF-8) is `None`.
fn parse_ascii<T: FromStr>(b: &[u8]) -> Option<T> {
    // The longest address literal is 45 bytes; refusing longer input early keeps a hostile
    // kilobyte-long entry from costing more than a length check.
    if b.is_empty() || b.len() > 45 {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn valid_port(p: &[u8], dialect: Dialect) -> bool {
    let numeric = (1..=5).contains(&p.len())
        && p.iter().all(u8::is_ascii_digit)
        && p.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0')) <= u32::from(u16::MAX);
    numeric || (dialect == Dialect::Forwarded && is_obfuscated(p))
}

/// RFC 7239 `obfnode` / `obfport`: `_` followed by ALPHA / DIGIT / `.` / `_` / `-`.
fn is_obfuscated(s: &[u8]) -> bool {
    match s {
        [b'_', rest @ ..] => {
            !rest.is_empty()
                && rest
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        }
        _ => false,
    }
}

/// One RFC 7239 `forwarded-element` (`for=…;proto=…;by=…`) to the hop its `for=` names.
fn forwarded_element(element: &[u8]) -> Entry {
    if element.trim_ascii().is_empty() {
        return Entry::Malformed;
    }
    let mut node: Option<&[u8]> = None;
    for pair in SplitOutsideQuotes::new(element, b';') {
        let pair = pair.trim_ascii();
        if pair.is_empty() {
            // `forwarded-element = [ forwarded-pair ] *( ";" [ forwarded-pair ] )`
            continue;
        }
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            return Entry::Malformed;
        };
        let name = pair[..eq].trim_ascii();
        let value = pair[eq + 1..].trim_ascii();
        if !is_token(name) || !is_value(value) {
            return Entry::Malformed;
        }
        if name.eq_ignore_ascii_case(b"for") {
            if node.is_some() {
                return Entry::Malformed;
            }
            node = Some(value);
        }
    }
    let Some(value) = node else {
        // A hop that does not say whom it served.
        return Entry::Opaque;
    };
    match quoted_content(value) {
        None => parse_node(value, Dialect::Forwarded),
        Some((content, false)) => parse_node(content, Dialect::Forwarded),
        Some((content, true)) => {
            // Escapes are legal but pointless in a node; undo them into a stack buffer. An
            // address node always fits; an escaped obfuscated id that does not is refused.
            let mut buf = [0u8; 64];
            let mut len = 0;
            let mut bytes = content.iter();
            while let Some(&b) = bytes.next() {
                let b = if b == b'\\' {
                    bytes.next().copied().unwrap_or(b)
                } else {
                    b
                };
                let Some(slot) = buf.get_mut(len) else {
                    return Entry::Malformed;
                };
                *slot = b;
                len += 1;
            }
            parse_node(&buf[..len], Dialect::Forwarded)
        }
    }
}

/// RFC 7230 `tchar`s only, at least one.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty()
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A pair value: a whole quoted-string, or a run without quotes or whitespace. (Stricter
/// RFC 7239 would demand a token; addresses with ports and brackets are accepted unquoted.)
fn is_value(v: &[u8]) -> bool {
    if v.first() == Some(&b'"') {
        quoted_content(v).is_some()
    } else {
        !v.is_empty()
            && !v
                .iter()
                .any(|&b| b == b'"' || b == b'\\' || b.is_ascii_whitespace())
    }
}

/// If `v` is exactly one quoted-string, its content (still escaped) and whether it holds
/// escapes.
fn quoted_content(v: &[u8]) -> Option<(&[u8], bool)> {
    let body = v.strip_prefix(b"\"")?;
    let mut escaped = false;
    let mut has_escape = false;
    for (i, &b) in body.iter().enumerate() {
        if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
            has_escape = true;
        } else if b == b'"' {
            // The closing quote must end the value.
            return (i + 1 == body.len()).then_some((&body[..i], has_escape));
        }
    }
    None
}

/// Split on `sep` where it is not inside a quoted-string. A quoted-string is one only when its
/// closing quote is followed, after optional whitespace, by `;`, `,` or the end of the input;
/// otherwise the opening quote is unterminated and the piece ends at the next `sep` after it
/// (and later fails [`quoted_content`]), so a stray quote never swallows the pieces after it.
/// Like `split`, yields at least once.
struct SplitOutsideQuotes<'a> {
    rest: Option<&'a [u8]>,
    sep: u8,
}

impl<'a> SplitOutsideQuotes<'a> {
    fn new(s: &'a [u8], sep: u8) -> Self {
        Self { rest: Some(s), sep }
    }

    /// Cut `s` at `i` (a separator) and keep what follows for the next call.
    fn cut(&mut self, s: &'a [u8], i: usize) -> &'a [u8] {
        self.rest = Some(&s[i + 1..]);
        &s[..i]
    }
}

/// Where the quoted-string opened at `open` closes, if it is a well-formed one.
fn closing_quote(s: &[u8], open: usize) -> Option<usize> {
    let mut escaped = false;
    for (i, &b) in s.iter().enumerate().skip(open + 1) {
        if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            let after = s[i + 1..].iter().find(|b| !matches!(b, b' ' | b'\t'));
            return matches!(after, None | Some(b',' | b';')).then_some(i);
        }
    }
    None
}

impl<'a> Iterator for SplitOutsideQuotes<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let s = self.rest?;
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'"' => match closing_quote(s, i) {
                    Some(close) => i = close,
                    None => {
                        // Unterminated: the piece ends at the next separator, quotes or not.
                        return match s[i..].iter().position(|&b| b == self.sep) {
                            Some(at) => Some(self.cut(s, i + at)),
                            None => {
                                self.rest = None;
                                Some(s)
                            }
                        };
                    }
                },
                b if b == self.sep => return Some(self.cut(s, i)),
                _ => {}
            }
            i += 1;
        }
        self.rest = None;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::parse_cidrs;
    use http::HeaderName;
    use proptest::prelude::*;

    use IpMode::{Cdn, Direct, Proxy};

    /// The trusted ranges of every table case. The last one is written IPv4-mapped and
    /// normalised to 172.16.0.0/12 by the config parser.
    const TRUSTED: [&str; 3] = ["10.0.0.0/8", "fd00::/8", "::ffff:172.16.0.0/108"];
    /// The CDN ranges of every table case: 10.0.0.0/16 and fd00::/16 are trusted as well,
    /// 192.0.2.0/24 is a CDN that is not a trusted hop; 172.16/12 and 10.1/16 are trusted hops
    /// that are not the CDN.
    const CDN: [&str; 3] = ["10.0.0.0/16", "fd00::/16", "192.0.2.0/24"];

    fn config(mode: IpMode, cdn_headers: &[&str]) -> GatewayConfig {
        GatewayConfig {
            ip_mode: mode,
            trusted_cidrs: parse_cidrs(&TRUSTED).expect("test CIDRs"),
            cdn_cidrs: parse_cidrs(&CDN).expect("test CIDRs"),
            cdn_headers: if cdn_headers.is_empty() {
                GatewayConfig::default().cdn_headers
            } else {
                cdn_headers
                    .iter()
                    .map(|h| HeaderName::from_bytes(h.as_bytes()).expect("header name"))
                    .collect()
            },
            ..GatewayConfig::default()
        }
    }

    fn header_map(headers: &[(&str, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_bytes(value).expect("header value"),
            );
        }
        map
    }

    struct Case<'a> {
        mode: IpMode,
        peer: &'a str,
        headers: &'a [(&'a str, &'a str)],
        /// Client IP, `ip_source`, flags (`""`, `"spoofed"`, `"malformed"`), upstream XFF.
        want: (&'a str, &'a str, &'a str, &'a str),
    }

    fn case<'a>(
        mode: IpMode,
        peer: &'a str,
        headers: &'a [(&'a str, &'a str)],
        want: (&'a str, &'a str, &'a str, &'a str),
    ) -> Case<'a> {
        Case {
            mode,
            peer,
            headers,
            want,
        }
    }

    #[track_caller]
    fn check_with(cfg: &GatewayConfig, c: &Case<'_>) {
        let headers: Vec<(&str, &[u8])> =
            c.headers.iter().map(|(n, v)| (*n, v.as_bytes())).collect();
        let map = header_map(&headers);
        let peer: IpAddr = c.peer.parse().expect("peer");
        let (ip, source, flags, xff) = c.want;
        let what = format!("{} peer={} headers={:?}", c.mode, c.peer, c.headers);
        let got = resolve_client_ip(peer, &map, cfg);
        assert_eq!(got.ip.to_string(), ip, "ip: {what}");
        assert_eq!(got.source.as_str(), source, "ip_source: {what}");
        let got_flags = match (got.spoofed_forwarded, got.malformed_forwarded) {
            (false, false) => "",
            (true, false) => "spoofed",
            (false, true) => "malformed",
            (true, true) => "spoofed+malformed",
        };
        assert_eq!(got_flags, flags, "flags: {what}");
        let (again, upstream) = resolve_with_forwarded_for(peer, &map, cfg);
        assert_eq!(again, got, "both entry points agree: {what}");
        assert_eq!(upstream, xff, "upstream X-Forwarded-For: {what}");
        assert_eq!(rewritten_forwarded_for(peer, &map, cfg), xff, "{what}");
    }

    #[track_caller]
    fn check_all(cases: &[Case<'_>]) {
        for c in cases {
            check_with(&config(c.mode, &[]), c);
        }
    }

    /// [`check_all`] with another `client_ip_header`.
    #[track_caller]
    fn check_all_reading(header: ClientIpHeader, cases: &[Case<'_>]) {
        for c in cases {
            let cfg = GatewayConfig {
                client_ip_header: header,
                ..config(c.mode, &[])
            };
            check_with(&cfg, c);
        }
    }

    const XFF: &str = "x-forwarded-for";
    const FWD: &str = "forwarded";
    const XRI: &str = "x-real-ip";
    const CF: &str = "cf-connecting-ip";
    const TCI: &str = "true-client-ip";

    #[test]
    #[rustfmt::skip] // Tables read better one case per line.
    fn direct_mode_uses_the_peer_and_ignores_headers_without_flagging_them() {
        check_all(&[
            case(Direct, "203.0.113.7", &[], ("203.0.113.7", "peer", "", "203.0.113.7")),
            case(Direct, "::ffff:203.0.113.7", &[], ("203.0.113.7", "peer", "", "203.0.113.7")),
            case(Direct, "2001:db8::7", &[], ("2001:db8::7", "peer", "", "2001:db8::7")),
            // Even a trusted peer is not believed in direct mode.
            case(Direct, "10.0.0.1", &[(XFF, "198.51.100.1")], ("10.0.0.1", "peer", "", "10.0.0.1")),
            case(
                Direct,
                "203.0.113.7",
                &[(XFF, "198.51.100.1"), (FWD, "for=198.51.100.2"), (XRI, "198.51.100.3"), (CF, "198.51.100.4")],
                ("203.0.113.7", "peer", "", "203.0.113.7"),
            ),
        ]);
    }

    #[test]
    #[rustfmt::skip] // Tables read better one case per line.
    fn untrusted_peer_headers_are_ignored_and_flagged_as_spoofed() {
        let spoofed = ("203.0.113.7", "peer", "spoofed", "203.0.113.7");
        let ignored = ("203.0.113.7", "peer", "", "203.0.113.7");
        check_all(&[
            case(Proxy, "203.0.113.7", &[(XFF, "198.51.100.1")], spoofed),
            // Headers that no rule believes (not the configured `client_ip_header`) are noise.
            case(Proxy, "203.0.113.7", &[(FWD, "for=198.51.100.1")], ignored),
            case(Proxy, "203.0.113.7", &[(XRI, "198.51.100.1")], ignored),
            // Present counts, whatever the value.
            case(Proxy, "203.0.113.7", &[(XFF, "")], spoofed),
            case(Proxy, "203.0.113.7", &[(XFF, "garbage")], spoofed),
            // An address just outside the trusted range.
            case(Proxy, "11.0.0.1", &[(XFF, "198.51.100.1")], ("11.0.0.1", "peer", "spoofed", "11.0.0.1")),
            case(Cdn, "203.0.113.7", &[(CF, "198.51.100.1")], spoofed),
            case(Cdn, "203.0.113.7", &[(TCI, "198.51.100.1")], spoofed),
            case(Cdn, "203.0.113.7", &[(XFF, "198.51.100.1")], spoofed),
            // CDN headers are not forwarding headers in proxy mode: nothing would believe them.
            case(Proxy, "203.0.113.7", &[(CF, "198.51.100.1")], ("203.0.113.7", "peer", "", "203.0.113.7")),
            // No headers, no flag.
            case(Proxy, "203.0.113.7", &[], ("203.0.113.7", "peer", "", "203.0.113.7")),
            case(Proxy, "203.0.113.7", &[("x-other", "198.51.100.1")], ("203.0.113.7", "peer", "", "203.0.113.7")),
        ]);
        check_all_reading(ClientIpHeader::Forwarded, &[
            case(Proxy, "203.0.113.7", &[(FWD, "for=198.51.100.1")], spoofed),
            case(Proxy, "203.0.113.7", &[(XFF, "198.51.100.1")], ignored),
        ]);
        check_all_reading(ClientIpHeader::XRealIp, &[
            case(Cdn, "203.0.113.7", &[(XRI, "198.51.100.1")], spoofed),
            case(Cdn, "203.0.113.7", &[(XFF, "198.51.100.1")], ignored),
        ]);
    }

    #[test]
    #[rustfmt::skip] // Tables read better one case per line.
    fn trusted_peer_walks_x_forwarded_for_right_to_left() {
        check_all(&[
            case(Proxy, "10.0.0.1", &[], ("10.0.0.1", "peer", "", "10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(XFF, "198.51.100.1")], ("198.51.100.1", "x-forwarded-for", "", "198.51.100.1, 10.0.0.1")),
            // Trusted hops are skipped; what the client wrote left of itself is not believed and
            // not passed on.
            case(
                Proxy,
                "10.0.0.1",
                &[(XFF, "1.1.1.1, 198.51.100.1,10.0.0.2 ,\t10.0.0.3")],
                ("198.51.100.1", "x-forwarded-for", "", "198.51.100.1, 10.0.0.2, 10.0.0.3, 10.0.0.1"),
            ),
            // Every line is part of the chain, in order.
            case(
                Proxy,
                "10.0.0.1",
                &[(XFF, "1.1.1.1, 198.51.100.1"), (XFF, "10.0.0.2")],
                ("198.51.100.1", "x-forwarded-for", "", "198.51.100.1, 10.0.0.2, 10.0.0.1"),
            ),
            case(
                Proxy,
                "10.0.0.1",
                &[(XFF, "10.0.0.2"), (XFF, "198.51.100.9")],
                ("198.51.100.9", "x-forwarded-for", "", "198.51.100.9, 10.0.0.1"),
            ),
            // Every address trusted: the leftmost is the client.
            case(
                Proxy,
                "10.0.0.1",
                &[(XFF, "10.0.0.5, 10.0.0.6"), (XFF, "172.16.0.9")],
                ("10.0.0.5", "x-forwarded-for", "", "10.0.0.5, 10.0.0.6, 172.16.0.9, 10.0.0.1"),
            ),
            // IPv6 peers and entries.
            case(Proxy, "fd00::1", &[(XFF, "2001:db8::5, fd00::2")], ("2001:db8::5", "x-forwarded-for", "", "2001:db8::5, fd00::2, fd00::1")),
            // XFF wins over Forwarded and X-Real-IP.
            case(
                Proxy,
                "10.0.0.1",
                &[(FWD, "for=198.51.100.2"), (XRI, "198.51.100.3"), (XFF, "198.51.100.1")],
                ("198.51.100.1", "x-forwarded-for", "", "198.51.100.1, 10.0.0.1"),
            ),
        ]);
    }

    #[test]
    #[rustfmt::skip] // Tables read better one case per line.
    fn ports_brackets_and_ipv4_mapped_addresses() {
        for (xff, want) in [
            ("198.51.100.1:5678", "198.51.100.1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("2001:db8::1", "2001:db8::1"),
            ("198.51.100.1, 10.0.0.2:80, [fd00::3]:8443", "198.51.100.1"),
            // Mapped entries are normalised and match IPv4 CIDRs (10/8, and 172.16/12 which
            // was configured in mapped form).
            ("::ffff:198.51.100.1", "198.51.100.1"),
            ("[::ffff:198.51.100.1]:80, ::ffff:10.0.0.5, [::ffff:172.16.1.1]:1", "198.51.100.1"),
            ("::ffff:10.0.0.5", "10.0.0.5"),
        ] {
            let chain = expected_chain(xff, "10.0.0.1");
            let headers = [(XFF, xff)];
            check_all(&[case(Proxy, "10.0.0.1", &headers, (want, "x-forwarded-for", "", &chain))]);
        }
        // A mapped peer is normalised before the trust check, in either CIDR form.
        check_all(&[
            case(Proxy, "::ffff:10.0.0.1", &[(XFF, "198.51.100.1")], ("198.51.100.1", "x-forwarded-for", "", "198.51.100.1, 10.0.0.1")),
            case(Proxy, "::ffff:172.16.5.5", &[(XFF, "198.51.100.1")], ("198.51.100.1", "x-forwarded-for", "", "198.51.100.1, 172.16.5.5")),
            case(Proxy, "::ffff:203.0.113.7", &[(XFF, "198.51.100.1")], ("203.0.113.7", "peer", "spoofed", "203.0.113.7")),
        ]);
    }

    /// The upstream chain for a list whose rightmost untrusted (or leftmost) entry is the client.
    fn expected_chain(list: &str, peer: &str) -> String {
        let cfg = config(Proxy, &[]);
        let mut out: Vec<String> = Vec::new();
        for e in list.rsplit(',') {
            let Entry::Addr(ip) = parse_node(e.as_bytes(), Dialect::List) else {
                panic!("test entry {e:?} must parse");
            };
            out.push(ip.to_string());
            if !cfg.is_trusted(ip) {
                break;
            }
        }
        out.reverse();
        out.push(peer.to_string());
        out.join(", ")
    }

    #[test]
    #[rustfmt::skip] // Tables read better one case per line.
    fn malformed_entries_end_the_walk_at_the_nearest_reporting_hop() {
        check_all(&[
            // Garbage behind a trusted hop: that hop's report is the last valid address walked.
            case(Proxy, "10.0.0.1", &[(XFF, "198.51.100.1, garbage, 10.0.0.2")], ("10.0.0.2", "x-forwarded-for", "malformed", "10.0.0.2, 10.0.0.1")),
            // Nothing walked: the peer.
            case(Proxy, "10.0.0.1", &[(XFF, "198.51.100.1, nope")], ("10.0.0.1", "peer", "malformed", "10.0.0.1")),
            // Empty and whitespace entries are malformed.
            case(Proxy, "10.0.0.1", &[(XFF, "198.51.100.1, , 10.0.0.2")], ("10.0.0.2", "x-forwarded-for", "malformed", "10.0.0.2, 10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(XFF, "198.51.100.1,")], ("10.0.0.1", "peer", "malformed", "10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(XFF, "")], ("10.0.0.1", "peer", "malformed", "10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(XFF, " \t ")], ("10.0.0.1", "peer", "malformed", "10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(XFF, "198.51.100.1"), (XFF, "")], ("10.0.0.1", "peer", "malformed", "10.0.0.1")),
            // Garbage left of the client is never walked.
            case(Proxy, "10.0.0.1", &[(XFF, "garbage, , 198.51.100.1")], ("198.51.100.1", "x-forwarded-for", "", "198.51.100.1, 10.0.0.1")),
            // A present but unusable XFF is still the chain: no fallback to other headers.
            case(Proxy, "10.0.0.1", &[(XFF, "nope"), (XRI, "198.51.100.3")], ("10.0.0.1", "peer", "malformed", "10.0.0.1")),
        ]);
        for bad in [
            "198.51.100.1:99999",
            "198.51.100.1:",
            "198.51.100.1:http",
            "198.51.100.1:-1",
            "[2001:db8::1",
            "[2001:db8::1]443",
            "[198.51.100.1]",
            "2001:db8::1:443:1:2:3:4:5",
            "unknown",
            "_hidden",
            "1.2.3.4.5",
            "256.1.1.1",
            "fe80::1%eth0",
            "\"198.51.100.1\"",
        ] {
            let headers = [(XFF, bad), (XFF, "10.0.0.2")];
            check_all(&[case(Proxy, "10.0.0.1", &headers, ("10.0.0.2", "x-forwarded-for", "malformed", "10.0.0.2, 10.0.0.1"))]);
        }
    }

    #[test]
    fn non_utf8_bytes_are_malformed_not_a_panic() {
        let peer: IpAddr = "10.0.0.1".parse().expect("ip");
        for (header, name, value) in [
            (
                ClientIpHeader::XForwardedFor,
                XFF,
                &b"198.51.100.1, 10.0.0.\xff"[..],
            ),
            (ClientIpHeader::Forwarded, FWD, &b"for=\"10.0.0.\xe9\""[..]),
            (ClientIpHeader::XRealIp, XRI, &b"\xc3\x28"[..]),
            (ClientIpHeader::XForwardedFor, CF, &b"\x80"[..]),
        ] {
            let cfg = GatewayConfig {
                client_ip_header: header,
                ..config(Cdn, &[])
            };
            let got = resolve_client_ip(peer, &header_map(&[(name, value)]), &cfg);
            assert_eq!(got.ip, peer, "{name}: {value:?}");
            assert!(got.malformed_forwarded, "{name}: {value:?}");
        }
    }

    #[test]
    #[rustfmt::skip] // Tables read better one case per line.
    fn forwarded_follows_rfc_7239() {
        check_all_reading(ClientIpHeader::Forwarded, &[
            case(Proxy, "10.0.0.1", &[(FWD, "for=198.51.100.1")], ("198.51.100.1", "forwarded", "", "198.51.100.1, 10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(FWD, "for=\"[2001:db8::1]:4711\"")], ("2001:db8::1", "forwarded", "", "2001:db8::1, 10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(FWD, "for=\"[2001:db8::1]\";proto=https")], ("2001:db8::1", "forwarded", "", "2001:db8::1, 10.0.0.1")),
            // Names are case-insensitive; ports stripped; pairs in any order; trusted hops skipped.
            case(
                Proxy,
                "10.0.0.1",
                &[(FWD, "proto=http;For=\"198.51.100.1:8080\";by=203.0.113.43, for=10.0.0.2;proto=https")],
                ("198.51.100.1", "forwarded", "", "198.51.100.1, 10.0.0.2, 10.0.0.1"),
            ),
            case(Proxy, "10.0.0.1", &[(FWD, "for=\"198.51.100.1:_abc\"")], ("198.51.100.1", "forwarded", "", "198.51.100.1, 10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(FWD, "for=\"[::ffff:10.0.0.9]\", for=10.0.0.2")], ("10.0.0.9", "forwarded", "", "10.0.0.9, 10.0.0.2, 10.0.0.1")),
            // Escapes inside a quoted-string are undone.
            case(Proxy, "10.0.0.1", &[(FWD, "for=\"198.51.100.\\1\"")], ("198.51.100.1", "forwarded", "", "198.51.100.1, 10.0.0.1")),
            // `unknown` and obfuscated ids end the walk without blame.
            case(Proxy, "10.0.0.1", &[(FWD, "for=198.51.100.1, for=unknown, for=10.0.0.2")], ("10.0.0.2", "forwarded", "", "10.0.0.2, 10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(FWD, "for=198.51.100.1, for=\"_hidden:_port\", for=10.0.0.2")], ("10.0.0.2", "forwarded", "", "10.0.0.2, 10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(FWD, "for=_hidden")], ("10.0.0.1", "peer", "", "10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(FWD, "for=UNKNOWN")], ("10.0.0.1", "peer", "", "10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(FWD, "for=\"unknown:4711\"")], ("10.0.0.1", "peer", "", "10.0.0.1")),
            // An element that does not say whom it served ends the walk the same way.
            case(Proxy, "10.0.0.1", &[(FWD, "for=198.51.100.1, proto=https;by=10.0.0.1")], ("10.0.0.1", "peer", "", "10.0.0.1")),
            // Commas (and semicolons) inside quoted-strings do not split.
            case(
                Proxy,
                "10.0.0.1",
                &[(FWD, "for=198.51.100.1;ext=\"x, for=203.0.113.9; for=1.1.1.1\"")],
                ("198.51.100.1", "forwarded", "", "198.51.100.1, 10.0.0.1"),
            ),
            case(
                Proxy,
                "10.0.0.1",
                &[(FWD, "for=198.51.100.1, for=10.0.0.2;ext=\"a,\\\"b,c\"")],
                ("198.51.100.1", "forwarded", "", "198.51.100.1, 10.0.0.2, 10.0.0.1"),
            ),
            // Every line counts, in order.
            case(Proxy, "10.0.0.1", &[(FWD, "for=198.51.100.1"), (FWD, "for=10.0.0.2")], ("198.51.100.1", "forwarded", "", "198.51.100.1, 10.0.0.2, 10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(FWD, "for=10.0.0.2"), (FWD, "for=198.51.100.1")], ("198.51.100.1", "forwarded", "", "198.51.100.1, 10.0.0.1")),
            // Only the configured header is read: X-Real-IP and X-Forwarded-For are not.
            case(Proxy, "10.0.0.1", &[(XRI, "198.51.100.3"), (FWD, "for=198.51.100.1")], ("198.51.100.1", "forwarded", "", "198.51.100.1, 10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(FWD, "for=198.51.100.1"), (XFF, "198.51.100.4")], ("198.51.100.1", "forwarded", "", "198.51.100.1, 10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(XFF, "198.51.100.4")], ("10.0.0.1", "peer", "", "10.0.0.1")),
        ]);
        for bad in [
            "for=bogus",
            "for=",
            "for",
            "garbage",
            "for=\"198.51.100.1",
            "for=\"198.51.100.1\"x",
            "for=198.51.100.1;for=198.51.100.2",
            "for=\"[2001:db8::1]:http\"",
            "for=_",
            "for=_a/b",
            "fo r=198.51.100.1",
            "",
            " ",
        ] {
            let headers = [(FWD, bad), (FWD, "for=10.0.0.2")];
            check_all_reading(ClientIpHeader::Forwarded, &[case(Proxy, "10.0.0.1", &headers, ("10.0.0.2", "forwarded", "malformed", "10.0.0.2, 10.0.0.1"))]);
        }
        // Empty elements are malformed too.
        check_all_reading(ClientIpHeader::Forwarded, &[
            case(Proxy, "10.0.0.1", &[(FWD, "for=198.51.100.1,,for=10.0.0.2")], ("10.0.0.2", "forwarded", "malformed", "10.0.0.2, 10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(FWD, "for=198.51.100.1,")], ("10.0.0.1", "peer", "malformed", "10.0.0.1")),
            // An unterminated quote swallows neither the next element nor the next line.
            case(
                Proxy,
                "10.0.0.1",
                &[(FWD, "for=\"198.51.100.1, for=10.0.0.3"), (FWD, "for=10.0.0.2")],
                ("10.0.0.3", "forwarded", "malformed", "10.0.0.3, 10.0.0.2, 10.0.0.1"),
            ),
        ]);
    }

    #[test]
    #[rustfmt::skip] // Tables read better one case per line.
    fn x_real_ip_when_it_is_the_configured_header() {
        check_all_reading(ClientIpHeader::XRealIp, &[
            case(Proxy, "10.0.0.1", &[(XRI, "198.51.100.3")], ("198.51.100.3", "x-real-ip", "", "198.51.100.3, 10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(XRI, "[2001:db8::3]:80")], ("2001:db8::3", "x-real-ip", "", "2001:db8::3, 10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(XRI, "10.0.0.7")], ("10.0.0.7", "x-real-ip", "", "10.0.0.7, 10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(XRI, "not-an-ip")], ("10.0.0.1", "peer", "malformed", "10.0.0.1")),
            case(Cdn, "10.0.0.1", &[(XRI, "198.51.100.3")], ("198.51.100.3", "x-real-ip", "", "198.51.100.3, 10.0.0.1")),
            // A client-sent X-Forwarded-For behind a hop that only sets X-Real-IP is ignored,
            // and no precedence lets it win.
            case(Proxy, "10.0.0.1", &[(XFF, "6.6.6.6"), (XRI, "198.51.100.3")], ("198.51.100.3", "x-real-ip", "", "198.51.100.3, 10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(XRI, "198.51.100.3"), (XFF, "6.6.6.6"), (FWD, "for=6.6.6.7")], ("198.51.100.3", "x-real-ip", "", "198.51.100.3, 10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(XFF, "6.6.6.6")], ("10.0.0.1", "peer", "", "10.0.0.1")),
        ]);
        // And with the default (X-Forwarded-For), a client-sent X-Real-IP is ignored.
        check_all(&[
            case(Proxy, "10.0.0.1", &[(XRI, "6.6.6.6")], ("10.0.0.1", "peer", "", "10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(XRI, "6.6.6.6"), (FWD, "for=6.6.6.7"), (XFF, "198.51.100.1")], ("198.51.100.1", "x-forwarded-for", "", "198.51.100.1, 10.0.0.1")),
        ]);
    }

    #[test]
    #[rustfmt::skip] // Tables read better one case per line.
    fn a_malformed_forwarded_element_never_swallows_the_hops_element() {
        let client = ("198.51.100.7", "forwarded", "", "198.51.100.7, 10.0.0.1");
        check_all_reading(ClientIpHeader::Forwarded, &[
            // The case: a client's stray quote, then what the trusted hop appended.
            case(Proxy, "10.0.0.1", &[(FWD, "for=\"x, for=198.51.100.7")], client),
            // The hop's own value quoted: the stray quote does not pair with the hop's.
            case(Proxy, "10.0.0.1", &[(FWD, "for=\"x, for=\"198.51.100.7\"")], client),
            case(Proxy, "10.0.0.1", &[(FWD, "for=\"x, for=\"[2001:db8::7]:4711\"")], ("2001:db8::7", "forwarded", "", "2001:db8::7, 10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(FWD, "for=1.1.1.1;ext=\", for=\"198.51.100.7\";proto=https")], client),
            // An escaped quote or comma does not close or hide anything either.
            case(Proxy, "10.0.0.1", &[(FWD, "for=\"x\\\", for=198.51.100.7")], client),
            case(Proxy, "10.0.0.1", &[(FWD, "for=\"x\\, for=198.51.100.7")], client),
            // A quote closed too early (text after it) is unterminated too.
            case(Proxy, "10.0.0.1", &[(FWD, "for=\"a\"b, for=198.51.100.7")], client),
            case(Proxy, "10.0.0.1", &[(FWD, "for=\"x\", y=\", for=198.51.100.7")], client),
            // Behind two trusted hops: the walk reaches the malformed element and stops there.
            case(Proxy, "10.0.0.1", &[(FWD, "for=\"x, for=10.0.0.2")], ("10.0.0.2", "forwarded", "malformed", "10.0.0.2, 10.0.0.1")),
            case(Proxy, "10.0.0.1", &[(FWD, "for=\"x, for=\"10.0.0.2\", for=198.51.100.7")], client),
        ]);
    }

    #[test]
    #[rustfmt::skip] // Tables read better one case per line.
    fn cdn_headers_take_precedence_in_order_then_proxy_rules() {
        check_all(&[
            case(Cdn, "10.0.0.1", &[(XFF, "198.51.100.9"), (CF, "198.51.100.1")], ("198.51.100.1", "cf-connecting-ip", "", "198.51.100.1, 10.0.0.1")),
            case(Cdn, "10.0.0.1", &[(TCI, "198.51.100.2"), (CF, "198.51.100.1")], ("198.51.100.1", "cf-connecting-ip", "", "198.51.100.1, 10.0.0.1")),
            case(Cdn, "10.0.0.1", &[(TCI, "198.51.100.2")], ("198.51.100.2", "true-client-ip", "", "198.51.100.2, 10.0.0.1")),
            // A CDN header is believed even when it names a trusted address.
            case(Cdn, "10.0.0.1", &[(CF, "10.0.0.4")], ("10.0.0.4", "cf-connecting-ip", "", "10.0.0.4, 10.0.0.1")),
            case(Cdn, "10.0.0.1", &[(CF, " ::ffff:198.51.100.1 ")], ("198.51.100.1", "cf-connecting-ip", "", "198.51.100.1, 10.0.0.1")),
            case(Cdn, "fd00::1", &[(CF, "2001:db8::1")], ("2001:db8::1", "cf-connecting-ip", "", "2001:db8::1, fd00::1")),
            // A header with garbage, two addresses or two lines is skipped, and flagged.
            case(Cdn, "10.0.0.1", &[(CF, "garbage"), (TCI, "198.51.100.2")], ("198.51.100.2", "true-client-ip", "malformed", "198.51.100.2, 10.0.0.1")),
            case(Cdn, "10.0.0.1", &[(CF, "198.51.100.1, 198.51.100.5"), (TCI, "198.51.100.2")], ("198.51.100.2", "true-client-ip", "malformed", "198.51.100.2, 10.0.0.1")),
            case(Cdn, "10.0.0.1", &[(CF, "198.51.100.1"), (CF, "198.51.100.1"), (XFF, "198.51.100.9")], ("198.51.100.9", "x-forwarded-for", "malformed", "198.51.100.9, 10.0.0.1")),
            case(Cdn, "10.0.0.1", &[(CF, ""), (XFF, "198.51.100.9")], ("198.51.100.9", "x-forwarded-for", "malformed", "198.51.100.9, 10.0.0.1")),
            // No CDN header: the proxy rules.
            case(Cdn, "10.0.0.1", &[(XFF, "198.51.100.9, 10.0.0.2")], ("198.51.100.9", "x-forwarded-for", "", "198.51.100.9, 10.0.0.2, 10.0.0.1")),
            case(Cdn, "10.0.0.1", &[], ("10.0.0.1", "peer", "", "10.0.0.1")),
        ]);
    }

    #[test]
    #[rustfmt::skip] // Tables read better one case per line.
    fn cdn_headers_are_believed_only_from_cdn_cidrs() {
        check_all(&[
            // A CDN that is not a trusted hop: its header is believed, its XFF is not needed.
            case(Cdn, "192.0.2.5", &[(CF, "198.51.100.1"), (XFF, "198.51.100.1")], ("198.51.100.1", "cf-connecting-ip", "", "198.51.100.1, 192.0.2.5")),
            // Without a usable CDN header, the proxy rules: the CDN is not trusted, so the peer;
            // its own forwarding header is not an attack.
            case(Cdn, "192.0.2.5", &[(XFF, "198.51.100.1")], ("192.0.2.5", "peer", "", "192.0.2.5")),
            case(Cdn, "192.0.2.5", &[(CF, "nope"), (XFF, "198.51.100.1")], ("192.0.2.5", "peer", "malformed", "192.0.2.5")),
            // A trusted hop that is not the CDN passes on what the client wrote: the CDN header
            // is ignored and flagged, the client comes from the configured header.
            case(Cdn, "172.16.0.1", &[(CF, "6.6.6.6"), (XFF, "198.51.100.1")], ("198.51.100.1", "x-forwarded-for", "spoofed", "198.51.100.1, 172.16.0.1")),
            case(Cdn, "10.1.0.1", &[(TCI, "6.6.6.6")], ("10.1.0.1", "peer", "spoofed", "10.1.0.1")),
            // Any other peer: ignored and flagged.
            case(Cdn, "203.0.113.7", &[(CF, "6.6.6.6")], ("203.0.113.7", "peer", "spoofed", "203.0.113.7")),
            // Outside cdn mode CDN headers mean nothing, whoever sends them.
            case(Proxy, "192.0.2.5", &[(CF, "6.6.6.6")], ("192.0.2.5", "peer", "", "192.0.2.5")),
            case(Proxy, "172.16.0.1", &[(CF, "6.6.6.6"), (XFF, "198.51.100.1")], ("198.51.100.1", "x-forwarded-for", "", "198.51.100.1, 172.16.0.1")),
        ]);
        // No cdn_cidrs (the default): no CDN header is believed at all.
        let cfg = GatewayConfig {
            cdn_cidrs: Vec::new(),
            ..config(Cdn, &[])
        };
        check_with(&cfg, &case(Cdn, "10.0.0.1", &[(CF, "6.6.6.6"), (XFF, "198.51.100.1")], ("198.51.100.1", "x-forwarded-for", "spoofed", "198.51.100.1, 10.0.0.1")));
    }

    #[test]
    #[rustfmt::skip] // Tables read better one case per line.
    fn cdn_header_list_is_configurable() {
        let cfg = config(Cdn, &["x-client-ip", "true-client-ip"]);
        check_with(
            &cfg,
            &case(Cdn, "10.0.0.1", &[(CF, "198.51.100.1"), (TCI, "198.51.100.2"), ("X-Client-IP", "198.51.100.3")], ("198.51.100.3", "x-client-ip", "", "198.51.100.3, 10.0.0.1")),
        );
        // A header no longer listed is neither believed nor, from an untrusted peer, spoofing.
        check_with(&cfg, &case(Cdn, "10.0.0.1", &[(CF, "198.51.100.1")], ("10.0.0.1", "peer", "", "10.0.0.1")));
        check_with(&cfg, &case(Cdn, "203.0.113.7", &[(CF, "198.51.100.1")], ("203.0.113.7", "peer", "", "203.0.113.7")));
        check_with(&cfg, &case(Cdn, "203.0.113.7", &[("x-client-ip", "198.51.100.1")], ("203.0.113.7", "peer", "spoofed", "203.0.113.7")));
    }

    /// Every address that could honestly be said to appear in `value`: runs of address
    /// characters (escapes removed), whole or with a trailing `:port` cut off.
    fn addresses_in(value: &[u8]) -> Vec<IpAddr> {
        let unescaped: Vec<u8> = value.iter().copied().filter(|&b| b != b'\\').collect();
        let mut found = Vec::new();
        for run in unescaped.split(|b| !(b.is_ascii_hexdigit() || *b == b'.' || *b == b':')) {
            let Ok(run) = std::str::from_utf8(run) else {
                continue;
            };
            let cut = run.rsplit_once(':').map_or(run, |(host, _)| host);
            for candidate in [run, cut] {
                if let Ok(ip) = candidate.parse::<IpAddr>() {
                    found.push(normalize_ip(ip));
                }
            }
        }
        found
    }

    /// Realistic pieces, so that generated headers often hold (nearly) valid chains.
    const FRAGMENTS: &[&[u8]] = &[
        b"198.51.100.1",
        b"10.0.0.2",
        b"172.16.3.4",
        b"::ffff:10.0.0.3",
        b"::ffff:198.51.100.7",
        b"2001:db8::1",
        b"fd00::2",
        b"[2001:db8::1]",
        b"[fd00::9]",
        b":443",
        b":_p",
        b",",
        b", ",
        b";",
        b"for=",
        b"For=",
        b"proto=https",
        b"\"",
        b"\\",
        b"unknown",
        b"_hid",
        b"[",
        b"]",
        b" ",
        b"\t",
        b"\xff",
        b"\xc3\xa9",
        b"garbage",
        b"=",
        b"1.2.3",
        b":99999",
    ];

    fn header_value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..48),
            proptest::collection::vec(proptest::sample::select(FRAGMENTS), 0..10)
                .prop_map(|parts| parts.concat()),
        ]
    }

    fn header_name() -> impl Strategy<Value = &'static str> {
        proptest::sample::select(vec![XFF, FWD, XRI, CF, TCI, "x-other"])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn never_panics_and_only_names_addresses_it_was_given(
            mode in proptest::sample::select(IpMode::ALL.to_vec()),
            peer in proptest::sample::select(vec!["10.0.0.1", "::ffff:10.0.0.1", "203.0.113.7", "fd00::1", "2001:db8::7", "192.0.2.5", "172.16.0.1"]),
            header in proptest::sample::select(ClientIpHeader::ALL.to_vec()),
            headers in proptest::collection::vec((header_name(), header_value()), 0..6),
        ) {
            let mut map = HeaderMap::new();
            let mut present = Vec::new();
            for (name, value) in &headers {
                // Skip what the http crate itself would never hand us.
                let Ok(v) = HeaderValue::from_bytes(value) else { continue };
                map.append(HeaderName::from_static(name), v);
                present.extend(addresses_in(value));
            }
            let cfg = GatewayConfig { client_ip_header: header, ..config(mode, &[]) };
            let peer: IpAddr = peer.parse().expect("peer");
            let norm_peer = normalize_ip(peer);
            let (got, upstream) = resolve_with_forwarded_for(peer, &map, &cfg);

            prop_assert_eq!(&got, &resolve_client_ip(peer, &map, &cfg));
            prop_assert_eq!(normalize_ip(got.ip), got.ip, "never IPv4-mapped");
            prop_assert!(got.ip == norm_peer || present.contains(&got.ip),
                "{} is neither the peer nor in the headers", got.ip);
            if got.source == IpSource::Peer {
                prop_assert_eq!(got.ip, norm_peer);
            }
            let cdn_peer = mode == IpMode::Cdn && cfg.is_cdn(norm_peer);
            if mode == IpMode::Direct || (!cfg.is_trusted(norm_peer) && !cdn_peer) {
                prop_assert_eq!(got.ip, norm_peer);
                prop_assert!(!got.malformed_forwarded);
            }
            if got.spoofed_forwarded && !cfg.is_trusted(norm_peer) {
                prop_assert_eq!(&got.source, &IpSource::Peer);
            }
            // Only the configured header (or a CDN header from a CDN peer) names the client.
            match &got.source {
                IpSource::Peer => {}
                IpSource::Cdn(_) => prop_assert!(cdn_peer),
                other => prop_assert_eq!(other.as_str(), header.as_str()),
            }

            // The upstream chain is well formed, starts with the client, ends with the peer.
            let chain: Vec<IpAddr> = upstream
                .split(", ")
                .map(|e| e.parse::<IpAddr>())
                .collect::<Result<_, _>>()
                .map_err(|e| TestCaseError::fail(format!("{upstream:?}: {e}")))?;
            prop_assert_eq!(chain.first(), Some(&got.ip));
            prop_assert_eq!(chain.last(), Some(&norm_peer));
            for hop in &chain[..chain.len() - 1] {
                prop_assert!(*hop == norm_peer || present.contains(hop));
            }
        }
    }
}
