//! Allow/deny lists: CIDRs compiled into sorted, merged address ranges, looked up by binary
//! search, so a list of thousands of entries costs the same per request as a list of three.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

/// Normalize IPv4-mapped IPv6 (`::ffff:a.b.c.d`) to IPv4, as everywhere in Watchpost (SPEC §2).
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// Parse one list entry: a CIDR, or a bare address taken as a host route (/32 or /128).
/// Host bits are ignored (`10.1.2.3/8` is `10.0.0.0/8`), and an IPv4-mapped IPv6 network
/// (`::ffff:10.0.0.0/104`) is the IPv4 network it denotes — the same rules as the gateway's
/// `trusted_cidrs`.
pub(crate) fn parse_cidr(raw: &str) -> Option<IpNet> {
    let s = raw.trim();
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => IpNet::from(s.parse::<IpAddr>().ok()?),
    };
    let net = match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).ok()?,
            None => net,
        },
        _ => net,
    };
    Some(net.trunc())
}

/// A set of addresses given as CIDRs.
#[derive(Clone, Debug, Default)]
pub(crate) struct CidrSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl CidrSet {
    /// Compile a list, or return every entry that does not parse.
    pub(crate) fn parse<S: AsRef<str>>(raw: &[S]) -> Result<Self, Vec<String>> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        let mut bad = Vec::new();
        for r in raw {
            match parse_cidr(r.as_ref()) {
                Some(IpNet::V4(n)) => {
                    v4.push((u32::from(n.network()), u32::from(n.broadcast())));
                }
                Some(IpNet::V6(n)) => {
                    v6.push((u128::from(n.network()), u128::from(n.broadcast())));
                }
                None => bad.push(r.as_ref().to_string()),
            }
        }
        if !bad.is_empty() {
            return Err(bad);
        }
        Ok(CidrSet {
            v4: merge(v4),
            v6: merge(v6),
        })
    }

    /// Whether the address (IPv4-mapped IPv6 counts as IPv4) is in the set.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match canonical(ip) {
            IpAddr::V4(a) => lookup(&self.v4, u32::from(a)),
            IpAddr::V6(a) => lookup(&self.v6, u128::from(a)),
        }
    }
}

/// Sort inclusive ranges and merge the overlapping or adjacent ones, so that at most one
/// range can hold any address and that range is the last one starting at or before it.
fn merge<T: Ord + Copy + Bounded>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1.next_or_max() => {
                if end > last.1 {
                    last.1 = end;
                }
            }
            _ => out.push((start, end)),
        }
    }
    out.shrink_to_fit();
    out
}

fn lookup<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let after = ranges.partition_point(|&(start, _)| start <= x);
    after
        .checked_sub(1)
        .and_then(|i| ranges.get(i))
        .is_some_and(|&(_, end)| x <= end)
}

/// `x + 1`, saturating: lets adjacent ranges merge without overflow at the top address.
trait Bounded {
    fn next_or_max(self) -> Self;
}

impl Bounded for u32 {
    fn next_or_max(self) -> Self {
        self.saturating_add(1)
    }
}

impl Bounded for u128 {
    fn next_or_max(self) -> Self {
        self.saturating_add(1)
    }
}

/// The key a per-client rate estimator should count under: an IPv4 client by its address, an
/// IPv6 client by its /64 (one subscriber usually holds a whole /64, so keying by address
/// would let it rotate through 2^64 identities). IPv4-mapped IPv6 counts as IPv4. The two
/// families never collide: IPv4 keys are the IPv4-mapped form `::ffff:a.b.c.d`, whose low 64
/// bits are never all zero, while an IPv6 key's low 64 bits always are.
pub fn rate_key(ip: IpAddr) -> u128 {
    match canonical(ip) {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a) & !u128::from(u64::MAX),
    }
}

/// The address a [`rate_key`] stands for: the IPv4 address, or the IPv6 /64's network address.
/// For logs and metrics labels.
pub fn rate_key_addr(key: u128) -> IpAddr {
    let v6 = Ipv6Addr::from(key);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn membership() {
        let set = CidrSet::parse(&[
            "10.0.0.0/8",
            "192.168.1.7",
            "192.168.1.8/32",
            "2001:db8::/32",
            "::ffff:172.16.0.0/108",
            " 203.0.113.9/24 ",
        ])
        .unwrap();
        let table = [
            ("10.0.0.0", true),
            ("10.255.255.255", true),
            ("11.0.0.0", false),
            ("9.255.255.255", false),
            ("192.168.1.7", true),
            ("192.168.1.8", true),
            ("192.168.1.9", false),
            ("192.168.1.6", false),
            ("::ffff:10.1.2.3", true),
            ("172.16.5.5", true),
            ("172.31.255.255", true),
            ("172.32.0.0", false),
            ("203.0.113.0", true),
            ("203.0.113.255", true),
            ("2001:db8:ffff::1", true),
            ("2001:db9::1", false),
            ("::1", false),
        ];
        for (addr, want) in table {
            assert_eq!(set.contains(ip(addr)), want, "{addr}");
        }
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        let set = CidrSet::parse(&[
            "10.0.0.0/24",
            "10.0.0.0/16",
            "10.1.0.0/16",
            "10.0.5.0/24",
            "0.0.0.0/0",
            "255.255.255.255",
        ])
        .unwrap();
        assert_eq!(set.v4, vec![(0, u32::MAX)]);
        let set = CidrSet::parse(&["10.0.0.0/16", "10.1.0.0/16", "10.3.0.0/16"]).unwrap();
        assert_eq!(set.v4.len(), 2);
        assert!(set.contains(ip("10.1.255.255")));
        assert!(!set.contains(ip("10.2.0.0")));
        let set = CidrSet::parse(&["::/0", "2001:db8::/32"]).unwrap();
        assert_eq!(set.v6, vec![(0, u128::MAX)]);
        assert!(
            !set.contains(ip("10.0.0.1")),
            "an IPv6 list never matches IPv4"
        );
    }

    #[test]
    fn invalid_entries_are_all_listed() {
        let bad =
            CidrSet::parse(&["10.0.0.0/8", "10.0.0.0/33", "nope", "", "1.2.3.4/-1"]).unwrap_err();
        assert_eq!(bad, ["10.0.0.0/33", "nope", "", "1.2.3.4/-1"]);
    }

    #[test]
    fn empty_set_contains_nothing() {
        let set = CidrSet::parse::<&str>(&[]).unwrap();
        assert!(!set.contains(ip("0.0.0.0")));
        assert!(!set.contains(ip("::")));
    }

    #[test]
    fn rate_keys() {
        assert_eq!(rate_key(ip("1.2.3.4")), rate_key(ip("::ffff:1.2.3.4")));
        assert_ne!(rate_key(ip("1.2.3.4")), rate_key(ip("1.2.3.5")));
        assert_eq!(
            rate_key(ip("2001:db8:1:2:aaaa::1")),
            rate_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_ne!(
            rate_key(ip("2001:db8:1:2::1")),
            rate_key(ip("2001:db8:1:3::1"))
        );
        assert_ne!(rate_key(ip("0.0.0.0")), rate_key(ip("::")));
        assert_eq!(rate_key_addr(rate_key(ip("1.2.3.4"))), ip("1.2.3.4"));
        assert_eq!(
            rate_key_addr(rate_key(ip("2001:db8:1:2:aaaa::1"))),
            ip("2001:db8:1:2::")
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn v4_net() -> impl Strategy<Value = String> {
        // Few distinct high octets so that ranges overlap, nest and touch often.
        (0u8..4, any::<u8>(), any::<u16>(), 0u8..=32)
            .prop_map(|(a, b, cd, len)| format!("{a}.{b}.{}.{}/{len}", cd >> 8, cd & 0xff))
    }

    fn v6_text(a: u16, b: u16, rest: u64) -> String {
        let g = |i: u32| (rest >> (16 * i)) & 0xffff;
        format!("{a:x}:{b:x}::{:x}:{:x}:{:x}:{:x}", g(3), g(2), g(1), g(0))
    }

    fn v6_net() -> impl Strategy<Value = String> {
        (0u16..4, any::<u16>(), any::<u64>(), 0u8..=128)
            .prop_map(|(a, b, rest, len)| format!("{}/{len}", v6_text(a, b, rest)))
    }

    proptest! {
        #[test]
        fn lookup_agrees_with_a_linear_scan(
            nets in prop::collection::vec(prop_oneof![v4_net(), v6_net()], 0..24),
            v4 in (0u8..4, any::<u8>(), any::<u16>()),
            v6 in (0u16..4, any::<u16>(), any::<u64>()),
        ) {
            let set = CidrSet::parse(&nets).unwrap();
            let parsed: Vec<IpNet> = nets.iter().filter_map(|n| parse_cidr(n)).collect();
            let a4: IpAddr = format!("{}.{}.{}.{}", v4.0, v4.1, v4.2 >> 8, v4.2 & 0xff).parse().unwrap();
            let a6: IpAddr = v6_text(v6.0, v6.1, v6.2).parse().unwrap();
            for addr in [a4, a6] {
                let naive = parsed.iter().any(|n| n.contains(&addr));
                prop_assert_eq!(set.contains(addr), naive, "{} in {:?}", addr, nets);
            }
        }

        #[test]
        fn parse_never_panics(raw in prop::collection::vec(".{0,40}", 0..6)) {
            let _ = CidrSet::parse(&raw);
        }
    }
}
