//! Addresses that have no country: private, loopback, link-local, documentation, multicast
//! and other special-purpose ranges (IANA special-purpose address registries).
//!
//! They are answered before the database is consulted because databases disagree about
//! them: some leave them empty, some carry a placeholder, and a database built with a
//! catch-all network would otherwise report a country for `10.0.0.1`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Turns an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as dual-stack listeners report
/// IPv4 peers) into the IPv4 address it carries; other addresses are returned unchanged.
pub(crate) fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// True when `ip` (already normalised) lies in a range that never has a country.
pub(crate) fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_special_v4(v4),
        IpAddr::V6(v6) => is_special_v6(v6),
    }
}

/// (network, prefix length) pairs, RFC 6890 and successors.
const SPECIAL_V4: &[(u32, u8)] = &[
    (0x0000_0000, 8),  // 0.0.0.0/8 "this network"
    (0x0A00_0000, 8),  // 10.0.0.0/8 private
    (0x6440_0000, 10), // 100.64.0.0/10 carrier-grade NAT
    (0x7F00_0000, 8),  // 127.0.0.0/8 loopback
    (0xA9FE_0000, 16), // 169.254.0.0/16 link-local
    (0xAC10_0000, 12), // 172.16.0.0/12 private
    (0xC000_0000, 24), // 192.0.0.0/24 IETF protocol assignments
    (0xC000_0200, 24), // 192.0.2.0/24 documentation (TEST-NET-1)
    (0xC058_6300, 24), // 192.88.99.0/24 deprecated 6to4 relay anycast
    (0xC0A8_0000, 16), // 192.168.0.0/16 private
    (0xC612_0000, 15), // 198.18.0.0/15 benchmarking
    (0xC633_6400, 24), // 198.51.100.0/24 documentation (TEST-NET-2)
    (0xCB00_7100, 24), // 203.0.113.0/24 documentation (TEST-NET-3)
    (0xE000_0000, 4),  // 224.0.0.0/4 multicast
    (0xF000_0000, 4),  // 240.0.0.0/4 reserved, including 255.255.255.255 broadcast
];

fn is_special_v4(ip: Ipv4Addr) -> bool {
    let bits = u32::from(ip);
    SPECIAL_V4.iter().any(|&(net, len)| {
        let mask = u32::MAX << (32 - u32::from(len));
        bits & mask == net
    })
}

/// Special-purpose ranges inside 2000::/3, the only block from which global unicast
/// addresses are allocated today.
const SPECIAL_V6_IN_GLOBAL: &[(u128, u8)] = &[
    (0x2001_0002_0000_0000_0000_0000_0000_0000, 48), // 2001:2::/48 benchmarking
    (0x2001_0010_0000_0000_0000_0000_0000_0000, 28), // 2001:10::/28 ORCHID (deprecated)
    (0x2001_0020_0000_0000_0000_0000_0000_0000, 28), // 2001:20::/28 ORCHIDv2
    (0x2001_0db8_0000_0000_0000_0000_0000_0000, 32), // 2001:db8::/32 documentation
    (0x3fff_0000_0000_0000_0000_0000_0000_0000, 20), // 3fff::/20 documentation (RFC 9637)
];

fn is_special_v6(ip: Ipv6Addr) -> bool {
    let bits = u128::from(ip);
    // Everything outside 2000::/3 is unspecified, loopback, IPv4-compatible, NAT64,
    // discard-only, SRv6 SIDs, unique-local, link-local, multicast or unallocated.
    if bits >> 125 != 0b001 {
        return true;
    }
    SPECIAL_V6_IN_GLOBAL.iter().any(|&(net, len)| {
        let mask = u128::MAX << (128 - u32::from(len));
        bits & mask == net
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn special(addr: &str, expected: bool) {
        let ip: IpAddr = addr.parse().unwrap();
        assert_eq!(is_special(normalize(ip)), expected, "{addr}");
    }

    #[test]
    fn ipv4_table() {
        for addr in [
            "0.0.0.0",
            "0.255.255.255",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "169.254.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            special(addr, true);
        }
        // Neighbours of the special ranges are ordinary public addresses.
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.0.3.1",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "203.0.112.1",
            "223.255.255.255",
        ] {
            special(addr, false);
        }
    }

    #[test]
    fn ipv6_table() {
        for addr in [
            "::",
            "::1",
            "::10.0.0.1", // IPv4-compatible (deprecated), not normalised
            "64:ff9b::808:808",
            "100::1",
            "2001:2::1",
            "2001:10::1",
            "2001:20::1",
            "2001:db8::1",
            "2001:db8:ffff::1",
            "3fff::1",
            "3fff:fff::1",
            "5f00::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            // IPv4-mapped forms of special IPv4 addresses.
            "::ffff:10.1.2.3",
            "::ffff:127.0.0.1",
            "::ffff:192.168.0.1",
        ] {
            special(addr, true);
        }
        for addr in [
            "2001:4860:4860::8888",
            "2606:4700:4700::1111",
            "2a00:1450:4001::1",
            "2001:db7:ffff::1",
            "2001:db9::1",
            "2001:3::1",
            "3ffe:ffff::1",
            "3fff:1000::1",
            "::ffff:8.8.8.8",
        ] {
            special(addr, false);
        }
    }

    #[test]
    fn mapped_addresses_are_normalised() {
        let mapped: IpAddr = "::ffff:1.2.3.4".parse().unwrap();
        assert_eq!(normalize(mapped), "1.2.3.4".parse::<IpAddr>().unwrap());
        let plain: IpAddr = "2001:4860::1".parse().unwrap();
        assert_eq!(normalize(plain), plain);
        // IPv4-compatible addresses are deprecated and deliberately not treated as IPv4.
        let compat: IpAddr = "::1.2.3.4".parse().unwrap();
        assert_eq!(normalize(compat), compat);
    }
}
