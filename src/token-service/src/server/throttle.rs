//! Brute-force protection for client and user authentication (`/token`, `/revoke`,
//! `/introspect` and the login form).
//!
//! Failed authentications fill two leaky buckets: one for the account (client id or
//! username) *at* the client address, one for the address alone. Each bucket holds up
//! to its limit and drains completely over the window. Past half of a limit, attempts
//! under that key are delayed (250 ms, doubling, at most 4 s); at the limit they are
//! refused with a retry time, before any password hash is computed.
//!
//! There is deliberately no bucket for an account alone: an attacker failing as
//! client A from address X slows down and then blocks only A-at-X (and, after many
//! accounts, X), never the real A calling from elsewhere, nor client B. Client
//! secrets are 256-bit random values, so spreading guesses over many addresses gains
//! an attacker nothing. IPv6 addresses count per /64, the block a single host
//! usually controls. State is in memory and bounded.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// Most buckets kept; beyond this, drained ones and then the stalest are dropped.
const MAX_BUCKETS: usize = 65_536;
const FIRST_DELAY: Duration = Duration::from_millis(250);
const MAX_DELAY: Duration = Duration::from_secs(4);

/// Failure limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Failures per account and address before 429.
    pub account_failures: u32,
    /// Failures per address (any account) before 429.
    pub address_failures: u32,
    /// Time for a full bucket to drain.
    pub window: Duration,
}

/// Who is authenticating.
#[derive(Debug, Clone, Copy)]
pub enum Account<'a> {
    Client(&'a str),
    User(&'a str),
}

/// What to do with an authentication attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead after waiting this long.
    Proceed(Duration),
    /// Refuse; the key accepts attempts again after this long.
    Blocked(Duration),
}

pub struct Throttle {
    limits: Limits,
    buckets: Mutex<HashMap<Key, Bucket>>,
}

/// Accounts are hashed: bounded memory per key whatever the client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Account([u8; 16], IpAddr),
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    updated: Instant,
}

impl Bucket {
    fn level_at(&self, now: Instant, drain_per_sec: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        (self.level - elapsed * drain_per_sec).max(0.0)
    }
}

impl Throttle {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether an attempt by `account` from `ip` may go ahead, and after what delay.
    pub fn check(&self, account: Account<'_>, ip: IpAddr, now: Instant) -> Verdict {
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let mut delay = Duration::ZERO;
        let mut blocked: Option<Duration> = None;
        for (key, limit) in self.keys(account, ip) {
            let drain = self.drain_per_sec(limit);
            let level = buckets
                .get(&key)
                .map_or(0.0, |bucket| bucket.level_at(now, drain));
            let allowed = f64::from(limit - 1);
            if level > allowed {
                let wait = Duration::from_secs_f64((level - allowed) / drain);
                blocked = Some(blocked.map_or(wait, |other| other.max(wait)));
            } else {
                delay = delay.max(delay_for(level, limit));
            }
        }
        blocked.map_or(Verdict::Proceed(delay), Verdict::Blocked)
    }

    pub fn record_failure(&self, account: Account<'_>, ip: IpAddr, now: Instant) {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, limit) in self.keys(account, ip) {
            let drain = self.drain_per_sec(limit);
            if !buckets.contains_key(&key) && buckets.len() >= MAX_BUCKETS {
                evict(&mut buckets, now, self.limits.window);
            }
            let bucket = buckets.entry(key).or_insert(Bucket {
                level: 0.0,
                updated: now,
            });
            bucket.level = bucket.level_at(now, drain) + 1.0;
            bucket.updated = now;
        }
    }

    /// A successful authentication clears the account's bucket at that address; the
    /// address's own bucket keeps draining at its pace, so that one valid credential
    /// does not launder failures on other accounts.
    pub fn record_success(&self, account: Account<'_>, ip: IpAddr) {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        buckets.remove(&account_key(account, address_key(ip)));
    }

    fn keys(&self, account: Account<'_>, ip: IpAddr) -> [(Key, u32); 2] {
        let address = address_key(ip);
        [
            (account_key(account, address), self.limits.account_failures),
            (Key::Address(address), self.limits.address_failures),
        ]
    }

    fn drain_per_sec(&self, limit: u32) -> f64 {
        f64::from(limit) / self.limits.window.as_secs_f64()
    }
}

/// No delay for the first half of the limit, then 250 ms doubling up to 4 s.
fn delay_for(level: f64, limit: u32) -> Duration {
    let free = (limit / 2).max(1);
    // Failures not yet drained, a partly drained one counting whole (consistent with
    // blocking at `level > limit - 1`). Below the limit here, so it fits in a u32.
    let failures = level.ceil() as u32;
    match failures.checked_sub(free) {
        None => Duration::ZERO,
        Some(doublings) => FIRST_DELAY
            .checked_mul(1 << doublings.min(8))
            .map_or(MAX_DELAY, |delay| delay.min(MAX_DELAY)),
    }
}

fn account_key(account: Account<'_>, address: IpAddr) -> Key {
    let (kind, name) = match account {
        Account::Client(client_id) => ("client", client_id),
        Account::User(username) => ("user", username),
    };
    let mut hasher = Sha256::new();
    hasher.update(kind.as_bytes());
    hasher.update([0]);
    hasher.update(name.as_bytes());
    let digest = hasher.finalize();
    let mut prefix = [0u8; 16];
    prefix.copy_from_slice(&digest[..16]);
    Key::Account(prefix, address)
}

/// IPv4 addresses as they are; IPv6 addresses by their /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// Makes room: drops the buckets that have drained, or else the stalest eighth.
fn evict(buckets: &mut HashMap<Key, Bucket>, now: Instant, window: Duration) {
    buckets.retain(|_, bucket| now.saturating_duration_since(bucket.updated) < window);
    if buckets.len() >= MAX_BUCKETS {
        let mut updated: Vec<Instant> = buckets.values().map(|bucket| bucket.updated).collect();
        let cutoff_index = updated.len() / 8;
        let (_, cutoff, _) = updated.select_nth_unstable(cutoff_index);
        let cutoff = *cutoff;
        buckets.retain(|_, bucket| bucket.updated > cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        account_failures: 4,
        address_failures: 10,
        window: Duration::from_secs(60),
    };

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn delays_then_blocks_an_account_at_an_address() {
        let throttle = Throttle::new(LIMITS);
        let attacker = ip("203.0.113.5");
        let target = Account::Client("mobile-app");
        let now = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..4 {
            match throttle.check(target, attacker, now) {
                Verdict::Proceed(delay) => delays.push(delay.as_millis()),
                Verdict::Blocked(_) => panic!("blocked too early"),
            }
            throttle.record_failure(target, attacker, now);
        }
        assert_eq!(delays, [0, 0, 250, 500]);
        // 4 failures in a 60 s window: one drains every 15 s.
        match throttle.check(target, attacker, now) {
            Verdict::Blocked(wait) => assert_eq!(wait.as_secs_f64().round(), 15.0),
            other => panic!("not blocked: {other:?}"),
        }
        assert!(matches!(
            throttle.check(target, attacker, now + Duration::from_secs(16)),
            Verdict::Proceed(_)
        ));

        // The same client from elsewhere, and another client here, are unaffected.
        assert_eq!(
            throttle.check(target, ip("198.51.100.7"), now),
            Verdict::Proceed(Duration::ZERO)
        );
        assert_eq!(
            throttle.check(Account::Client("other"), attacker, now),
            Verdict::Proceed(Duration::ZERO)
        );
        // A user named like the client is another account.
        assert_eq!(
            throttle.check(Account::User("mobile-app"), attacker, now),
            Verdict::Proceed(Duration::ZERO)
        );
    }

    #[test]
    fn failures_across_accounts_block_the_address() {
        let throttle = Throttle::new(LIMITS);
        let attacker = ip("2001:db8:1:2::5");
        let now = Instant::now();
        for index in 0..10 {
            let name = format!("guess-{index}");
            assert!(matches!(
                throttle.check(Account::User(&name), attacker, now),
                Verdict::Proceed(_)
            ));
            throttle.record_failure(Account::User(&name), attacker, now);
        }
        assert!(matches!(
            throttle.check(Account::User("fresh"), attacker, now),
            Verdict::Blocked(_)
        ));
        assert!(
            matches!(
                throttle.check(Account::User("fresh"), ip("2001:db8:1:2::99"), now),
                Verdict::Blocked(_)
            ),
            "the same /64"
        );
        assert_eq!(
            throttle.check(Account::User("fresh"), ip("2001:db8:1:3::5"), now),
            Verdict::Proceed(Duration::ZERO)
        );
    }

    #[test]
    fn success_clears_the_account_but_not_the_address() {
        let throttle = Throttle::new(LIMITS);
        let here = ip("192.0.2.1");
        let app = Account::Client("app");
        let now = Instant::now();
        for _ in 0..3 {
            throttle.record_failure(app, here, now);
        }
        throttle.record_success(app, here);
        // Had the account kept its 3 failures, a fourth would block it.
        throttle.record_failure(app, here, now);
        assert_eq!(
            throttle.check(app, here, now),
            Verdict::Proceed(Duration::ZERO)
        );
        for _ in 0..6 {
            throttle.record_failure(Account::Client("x"), here, now);
        }
        throttle.record_success(app, here);
        assert!(
            matches!(
                throttle.check(Account::Client("y"), here, now),
                Verdict::Blocked(_)
            ),
            "10 failures at this address, whatever succeeded in between"
        );
    }

    #[test]
    fn delays_grow_and_are_capped() {
        assert_eq!(delay_for(0.0, 10), Duration::ZERO);
        assert_eq!(delay_for(4.0, 10), Duration::ZERO);
        assert_eq!(delay_for(4.01, 10), Duration::from_millis(250));
        assert_eq!(delay_for(5.0, 10), Duration::from_millis(250));
        assert_eq!(delay_for(7.0, 10), Duration::from_secs(1));
        assert_eq!(delay_for(9.0, 10), Duration::from_secs(4));
        assert_eq!(delay_for(90.0, 100), MAX_DELAY);
        assert_eq!(delay_for(0.0, 1), Duration::ZERO);
    }

    #[test]
    fn memory_stays_bounded() {
        let throttle = Throttle::new(LIMITS);
        let start = Instant::now();
        for index in 0..(MAX_BUCKETS as u32 / 2 + 10) {
            let ip = IpAddr::from(index.to_be_bytes());
            throttle.record_failure(
                Account::Client("c"),
                ip,
                start + Duration::from_millis(u64::from(index)),
            );
        }
        let buckets = throttle.buckets.lock().expect("lock").len();
        assert!(buckets <= MAX_BUCKETS, "{buckets}");
    }
}
