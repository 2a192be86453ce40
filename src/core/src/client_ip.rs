//! Which address a request comes from, for per-IP limits and brute-force
//! protection. `X-Forwarded-For` is client-controlled except for the entries
//! your own proxies appended, so only those are trusted.

use crate::config::ClientIpSource;
use std::net::{IpAddr, SocketAddr};

/// The client address: the TCP peer (Envoy's `source.address`, `ip:port`),
/// or the `X-Forwarded-For` entry `trusted_hops` from the right. Falls back
/// to the peer when the header is missing, too short, or not an address.
pub fn resolve(source: ClientIpSource, peer: Option<&str>, xff: Option<&[u8]>) -> Option<String> {
    let peer_ip = peer.and_then(|p| {
        p.parse::<SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| p.parse::<IpAddr>())
            .ok()
    });
    let forwarded = match source {
        ClientIpSource::Peer => None,
        ClientIpSource::XForwardedFor { trusted_hops } => {
            xff.and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| {
                let entries: Vec<&str> = v.split(',').map(str::trim).collect();
                let index = entries.len().checked_sub(trusted_hops as usize)?;
                entries.get(index)?.parse::<IpAddr>().ok()
            })
        }
    };
    forwarded.or(peer_ip).map(|ip| ip.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses() {
        let peer = ClientIpSource::Peer;
        assert_eq!(
            resolve(peer, Some("127.0.0.2:5555"), None).as_deref(),
            Some("127.0.0.2")
        );
        assert_eq!(
            resolve(peer, Some("[::1]:80"), None).as_deref(),
            Some("::1")
        );
        assert_eq!(
            resolve(peer, Some("10.1.2.3"), None).as_deref(),
            Some("10.1.2.3")
        );
        assert_eq!(resolve(peer, Some("garbage"), None), None);
        assert_eq!(
            resolve(peer, Some("1.2.3.4:1"), Some(b"9.9.9.9")).as_deref(),
            Some("1.2.3.4"),
            "XFF ignored"
        );
    }

    #[test]
    fn forwarded_for_trusts_only_the_last_hops() {
        let one = ClientIpSource::XForwardedFor { trusted_hops: 1 };
        let two = ClientIpSource::XForwardedFor { trusted_hops: 2 };
        let xff = b"6.6.6.6, 203.0.113.9, 10.0.0.1";
        assert_eq!(
            resolve(one, Some("10.0.0.2:1"), Some(xff)).as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(
            resolve(two, Some("10.0.0.2:1"), Some(xff)).as_deref(),
            Some("203.0.113.9")
        );
        // Too few entries, junk, or no header: the peer.
        assert_eq!(
            resolve(two, Some("10.0.0.2:1"), Some(b"1.1.1.1")).as_deref(),
            Some("10.0.0.2")
        );
        assert_eq!(
            resolve(one, Some("10.0.0.2:1"), Some(b"not-an-ip")).as_deref(),
            Some("10.0.0.2")
        );
        assert_eq!(
            resolve(one, Some("10.0.0.2:1"), Some(b"\xff")).as_deref(),
            Some("10.0.0.2")
        );
        assert_eq!(
            resolve(one, Some("10.0.0.2:1"), None).as_deref(),
            Some("10.0.0.2")
        );
    }
}
