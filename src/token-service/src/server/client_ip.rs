//! The address a request came from, for throttling: the socket peer, unless that peer
//! is a trusted proxy (`--trusted-proxies`), in which case the right-most
//! `X-Forwarded-For` entry that is not a trusted proxy.
//!
//! Entries to the left of the first untrusted one were written by the client itself
//! and are ignored: a client cannot pick the address it is throttled under.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

pub use tollgate_contract::cidr::Cidr;

use axum::http::HeaderMap;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// The proxies whose `X-Forwarded-For` is believed: a comma-separated list of CIDR
/// ranges, possibly empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|range| range.contains(ip))
    }

    /// The client address of a request that arrived from `peer` with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.contains(client) {
            return client;
        }
        let entries: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect();
        for entry in entries.into_iter().rev() {
            // An unparsable entry was not written by a trusted hop: stop at the last
            // address a trusted party vouched for.
            let Some(ip) = parse_entry(entry) else {
                return client;
            };
            client = ip;
            if !self.contains(ip) {
                return ip;
            }
        }
        client
    }
}

impl FromStr for TrustedProxies {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.split(',')
            .map(str::trim)
            .filter(|range| !range.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, range) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{range}")?;
        }
        Ok(())
    }
}

/// `192.0.2.1`, `2001:db8::1`, and the forms with a port some proxies write:
/// `192.0.2.1:4711`, `[2001:db8::1]:4711`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|socket| socket.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                X_FORWARDED_FOR,
                HeaderValue::from_str(value).expect("header"),
            );
        }
        headers
    }

    #[test]
    fn cidr_ranges() {
        let private: Cidr = "10.0.0.0/8".parse().expect("cidr");
        assert!(private.contains(ip("10.255.0.1")));
        assert!(!private.contains(ip("11.0.0.1")));
        assert!(private.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        let loopback6: Cidr = "::1/128".parse().expect("cidr");
        assert!(loopback6.contains(ip("::1")));
        assert!(!loopback6.contains(ip("127.0.0.1")));
        let everything: Cidr = "0.0.0.0/0".parse().expect("cidr");
        assert!(everything.contains(ip("203.0.113.9")));
        let host: Cidr = "192.0.2.7".parse().expect("bare address");
        assert_eq!(host.to_string(), "192.0.2.7/32");
        for bad in ["10.0.0.0/33", "::/129", "nonsense", "10.0.0.0/", "/8"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn trusted_proxy_lists() {
        let default: TrustedProxies = "127.0.0.1/32,::1/128".parse().expect("list");
        assert_eq!(default.to_string(), "127.0.0.1/32,::1/128");
        assert_eq!("".parse::<TrustedProxies>(), Ok(TrustedProxies::default()));
        assert!("10.0.0.0/8, bogus".parse::<TrustedProxies>().is_err());
    }

    #[test]
    fn untrusted_peers_are_the_client_whatever_they_forward() {
        let trusted: TrustedProxies = "127.0.0.1/32".parse().expect("list");
        let headers = forwarded(&["198.51.100.1"]);
        assert_eq!(
            trusted.client_ip(ip("203.0.113.5"), &headers),
            ip("203.0.113.5")
        );
    }

    #[test]
    fn trusted_peers_name_the_right_most_untrusted_hop() {
        let trusted: TrustedProxies = "127.0.0.1/32,10.0.0.0/8".parse().expect("list");
        let peer = ip("127.0.0.1");
        // The client claimed 192.0.2.66; Envoy appended the real address.
        let headers = forwarded(&["192.0.2.66, 203.0.113.5"]);
        assert_eq!(trusted.client_ip(peer, &headers), ip("203.0.113.5"));
        // Through an inner trusted proxy, over two header lines.
        let headers = forwarded(&["192.0.2.66", "203.0.113.5, 10.1.1.1"]);
        assert_eq!(trusted.client_ip(peer, &headers), ip("203.0.113.5"));
        // Ports and brackets.
        let headers = forwarded(&["[2001:db8::7]:4711"]);
        assert_eq!(trusted.client_ip(peer, &headers), ip("2001:db8::7"));
        // Every hop trusted: the left-most.
        let headers = forwarded(&["10.2.2.2, 10.1.1.1"]);
        assert_eq!(trusted.client_ip(peer, &headers), ip("10.2.2.2"));
        // Garbage at the right end: the last trusted address.
        let headers = forwarded(&["203.0.113.5, garbage, 10.1.1.1"]);
        assert_eq!(trusted.client_ip(peer, &headers), ip("10.1.1.1"));
        // No header: the peer.
        assert_eq!(trusted.client_ip(peer, &HeaderMap::new()), peer);
    }
}
