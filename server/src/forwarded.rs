//! The client address the brute-force guard keys on: the TCP peer, unless
//! the peer is a trusted proxy (`limits.trustedProxies`), whose
//! `X-Forwarded-For` is then believed. Keyed on the proxy instead, one
//! guessing client behind a shared proxy (an ingress controller, a corporate
//! NAT) would lock out every other client of that proxy.

use std::net::IpAddr;

use ipnet::IpNet;

/// Why a `trustedProxies` entry was refused.
#[derive(Debug, thiserror::Error)]
#[error("limits.trustedProxies: {0:?} is not a CIDR (such as 10.0.0.0/8) or an address")]
pub struct BadProxy(pub String);

/// Parses the configured ranges; a bare address is a one-address range.
pub fn parse_trusted(entries: &[String]) -> Result<Vec<IpNet>, BadProxy> {
    entries
        .iter()
        .map(|e| {
            e.parse::<IpNet>()
                .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| BadProxy(e.clone()))
        })
        .collect()
}

/// The address to key on. Walks `X-Forwarded-For` (every header, each a
/// comma-separated list; the nearest hop last) from the right while the
/// hops are trusted proxies: the first one that is not is the client. Only
/// the trusted proxies' own entries are believed, so a client cannot pick
/// its key by sending a forged header of its own through the proxy. An
/// entry that is not an address ends the walk at the last trusted hop.
pub fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl IntoIterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded_for
        .into_iter()
        .flat_map(|header| header.split(','))
        .map(str::trim)
        .filter(|hop| !hop.is_empty())
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            return client;
        };
        client = ip;
        if !is_trusted(&ip) {
            return ip;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_a_trusted_peer_is_believed() {
        let trusted = parse_trusted(&["10.0.0.0/8".into(), "192.0.2.1".into()]).unwrap();
        // An untrusted peer is keyed on itself, whatever it claims.
        assert_eq!(
            client_ip(ip("203.0.113.9"), ["198.51.100.7"], &trusted),
            ip("203.0.113.9")
        );
        // A trusted proxy's client.
        assert_eq!(
            client_ip(ip("10.1.2.3"), ["198.51.100.7"], &trusted),
            ip("198.51.100.7")
        );
        // Through two trusted proxies; the client's own forged entry on the
        // left is not believed.
        assert_eq!(
            client_ip(
                ip("10.1.2.3"),
                ["1.1.1.1, 198.51.100.7", "192.0.2.1"],
                &trusted
            ),
            ip("198.51.100.7")
        );
        // No header: the proxy itself.
        assert_eq!(client_ip(ip("10.1.2.3"), [], &trusted), ip("10.1.2.3"));
        // Garbage ends the walk at the last trusted hop.
        assert_eq!(
            client_ip(ip("10.1.2.3"), ["198.51.100.7, nonsense"], &trusted),
            ip("10.1.2.3")
        );
        // Every hop trusted: the leftmost.
        assert_eq!(
            client_ip(ip("10.1.2.3"), ["10.9.9.9"], &trusted),
            ip("10.9.9.9")
        );
        // IPv6.
        let v6 = parse_trusted(&["2001:db8::/32".into()]).unwrap();
        assert_eq!(
            client_ip(ip("2001:db8::1"), ["2001:db8:ffff::1, 2606:4700::1"], &v6),
            ip("2606:4700::1")
        );
    }

    #[test]
    fn bad_ranges_are_refused() {
        assert!(parse_trusted(&["10.0.0.0/33".into()]).is_err());
        assert!(parse_trusted(&["proxy.example".into()]).is_err());
    }
}
