//! Address blocks (`203.0.113.0/24`, `2001:db8::/32`, a bare address for one host),
//! read the same way by the token service (API-key restrictions, trusted proxies) and
//! the gateway (key sets, rules).
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are IPv4: an IPv4 block contains
//! them, and a block written as `::ffff:a.b.c.d/n` (n ≥ 96) is the IPv4 block
//! `a.b.c.d/(n-96)`.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Option<Cidr> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let address = address.parse::<IpAddr>().ok()?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().ok().filter(|&p| p <= max)?
            }
            Some(_) => return None,
        };
        let (network, prefix) = match address {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (address, prefix),
            },
            _ => (address, prefix),
        };
        Some(Cidr { network, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match self.network {
            IpAddr::V4(network) => match ip.to_canonical() {
                IpAddr::V4(ip) => {
                    let mask = u32::MAX
                        .checked_shl(32 - u32::from(self.prefix))
                        .unwrap_or(0);
                    u32::from(network) & mask == u32::from(ip) & mask
                }
                IpAddr::V6(_) => false,
            },
            IpAddr::V6(network) => {
                let ip: Ipv6Addr = match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(ip) & mask
            }
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Cidr::parse(text).ok_or_else(|| format!("{text:?} is not an IP address or CIDR range"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_of_both_families() {
        let v4 = Cidr::parse("203.0.113.0/24").unwrap();
        assert!(v4.contains(ip("203.0.113.9")));
        assert!(!v4.contains(ip("203.0.114.9")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("203.0.113.9")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("10.0.0.1").unwrap().contains(ip("10.0.0.1")));
        assert!(!Cidr::parse("10.0.0.1").unwrap().contains(ip("10.0.0.2")));
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4_on_both_sides() {
        let v4 = Cidr::parse("203.0.113.0/24").unwrap();
        assert!(v4.contains(ip("::ffff:203.0.113.9")));
        let mapped = Cidr::parse("::ffff:203.0.113.0/120").unwrap();
        assert_eq!(mapped, v4);
        assert_eq!(mapped.to_string(), "203.0.113.0/24");
        assert!(mapped.contains(ip("203.0.113.9")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("203.0.113.9")));
    }

    #[test]
    fn refuses_what_is_not_a_block() {
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "host",
            "10.0.0.0/8/8",
        ] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
    }
}
