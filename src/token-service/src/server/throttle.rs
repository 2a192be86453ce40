//! Brute-force protection for client and user authentication (`/token`, `/revoke`,
//! `/introspect` and the login form).
//!
//! Failed authentications fill two leaky buckets: one for the account (client id or
//! username) *at* the client address, one for the address alone. Each bucket holds up
//! to its limit and drains completely over the window. Past half of a limit, attempts
//! under that key are delayed (250 ms, doubling, at most 4 s); at the limit they are
//! refused with a retry time, before any password hash is computed.
//!
//! Checking and counting are one step: [`Throttle::begin`] reserves a failure in both
//! buckets under the lock before the caller verifies anything, and
//! [`Attempt::succeeded`] hands the reservation back. However many guesses arrive at
//! once, at most the limit of them are ever verified. An attempt that ends any other
//! way (wrong credentials, an error, a dropped request) keeps its reservation: it
//! counts as a failure.
//!
//! A refused attempt is not counted, so a bucket never holds more than its limit and
//! a blocked key waits at most one drain step for its next attempt: `window ÷ limit` (90 s for an account, 18 s for an
//! address with the defaults). `Retry-After` is bounded by that, however long the
//! attack goes on.
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

/// Refused: the key accepts attempts again after this long.
#[derive(Debug, PartialEq, Eq)]
pub struct Blocked(pub Duration);

impl Blocked {
    /// The wait in whole seconds, at least 1: a `Retry-After` value.
    pub fn retry_after_secs(&self) -> u64 {
        self.0.as_secs_f64().ceil().max(1.0) as u64
    }
}

/// An attempt the throttle let through, holding one failure in each of its buckets
/// until it [`succeeded`](Attempt::succeeded).
#[must_use = "an attempt counts as failed unless `succeeded` is called"]
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    account: Key,
    address: Key,
    delay: Duration,
}

impl Attempt<'_> {
    /// How long to wait before verifying: attempts past half a limit are slowed down.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// The credentials held: clears the account's bucket at that address and returns
    /// the address's reserved failure; the rest of the address's bucket keeps draining
    /// at its pace, so that one valid credential does not launder failures on other
    /// accounts.
    pub fn succeeded(self) {
        let mut buckets = self.throttle.lock();
        buckets.remove(&self.account);
        if let Some(bucket) = buckets.get_mut(&self.address) {
            bucket.level = (bucket.level - 1.0).max(0.0);
        }
    }

    /// The credentials were wrong: the reserved failures stay counted.
    pub fn failed(self) {}
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

    /// Lets an attempt by `account` from `ip` go ahead, counting it as a failure until
    /// it succeeds, or refuses it without counting anything. One step under the lock.
    pub fn begin(
        &self,
        account: Account<'_>,
        ip: IpAddr,
        now: Instant,
    ) -> Result<Attempt<'_>, Blocked> {
        let address = address_key(ip);
        let keys = [
            (account_key(account, address), self.limits.account_failures),
            (Key::Address(address), self.limits.address_failures),
        ];
        let mut buckets = self.lock();
        let mut delay = Duration::ZERO;
        let mut blocked: Option<Duration> = None;
        for (key, limit) in keys {
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
        if let Some(wait) = blocked {
            return Err(Blocked(wait));
        }
        for (key, limit) in keys {
            let drain = self.drain_per_sec(limit);
            if !buckets.contains_key(&key) && buckets.len() >= MAX_BUCKETS {
                evict(&mut buckets, now, self.limits.window);
            }
            let bucket = buckets.entry(key).or_insert(Bucket {
                level: 0.0,
                updated: now,
            });
            // At most the limit: only attempts below it are counted.
            bucket.level = bucket.level_at(now, drain) + 1.0;
            bucket.updated = now;
        }
        let [(account, _), (address, _)] = keys;
        Ok(Attempt {
            throttle: self,
            account,
            address,
            delay,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Bucket>> {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner)
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    const LIMITS: Limits = Limits {
        account_failures: 4,
        address_failures: 10,
        window: Duration::from_secs(60),
    };

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    /// A failed attempt; returns the delay it was given.
    fn fail(throttle: &Throttle, account: Account<'_>, ip: IpAddr, now: Instant) -> Duration {
        let attempt = throttle.begin(account, ip, now).expect("not blocked");
        let delay = attempt.delay();
        attempt.failed();
        delay
    }

    fn is_blocked(throttle: &Throttle, account: Account<'_>, ip: IpAddr, now: Instant) -> bool {
        throttle.begin(account, ip, now).is_err()
    }

    #[test]
    fn delays_then_blocks_an_account_at_an_address() {
        let throttle = Throttle::new(LIMITS);
        let attacker = ip("203.0.113.5");
        let target = Account::Client("mobile-app");
        let now = Instant::now();
        let delays: Vec<u128> = (0..4)
            .map(|_| fail(&throttle, target, attacker, now).as_millis())
            .collect();
        assert_eq!(delays, [0, 0, 250, 500]);
        // 4 failures in a 60 s window: one drains every 15 s.
        match throttle.begin(target, attacker, now) {
            Err(blocked) => assert_eq!(blocked.retry_after_secs(), 15),
            Ok(_) => panic!("not blocked"),
        }
        assert!(!is_blocked(
            &throttle,
            target,
            attacker,
            now + Duration::from_secs(16)
        ));

        // The same client from elsewhere, and another client here, are unaffected.
        let fresh = |account, ip| {
            throttle
                .begin(account, ip, now)
                .map(|attempt| attempt.delay())
        };
        assert_eq!(fresh(target, ip("198.51.100.7")), Ok(Duration::ZERO));
        assert_eq!(
            fresh(Account::Client("other"), attacker),
            Ok(Duration::ZERO)
        );
        // A user named like the client is another account.
        assert_eq!(
            fresh(Account::User("mobile-app"), attacker),
            Ok(Duration::ZERO)
        );
    }

    #[test]
    fn concurrent_attempts_never_pass_the_limit() {
        // Regression: checking and counting were two steps, so every one of many
        // simultaneous guesses passed the check before any was counted.
        let throttle = Throttle::new(LIMITS);
        let attacker = ip("203.0.113.5");
        let now = Instant::now();
        let admitted = AtomicUsize::new(0);
        let start = std::sync::Barrier::new(50);
        std::thread::scope(|scope| {
            for _ in 0..50 {
                scope.spawn(|| {
                    start.wait();
                    if let Ok(attempt) = throttle.begin(Account::User("alice"), attacker, now) {
                        admitted.fetch_add(1, Ordering::SeqCst);
                        // Held while "hashing", as a request would.
                        std::thread::sleep(Duration::from_millis(20));
                        attempt.failed();
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn an_attempt_dropped_unresolved_counts_as_a_failure() {
        let throttle = Throttle::new(LIMITS);
        let here = ip("192.0.2.1");
        let now = Instant::now();
        for _ in 0..4 {
            drop(throttle.begin(Account::Client("app"), here, now));
        }
        assert!(is_blocked(&throttle, Account::Client("app"), here, now));
    }

    #[test]
    fn the_wait_is_bounded_however_long_the_attack() {
        let throttle = Throttle::new(LIMITS);
        let attacker = ip("203.0.113.5");
        let now = Instant::now();
        let mut longest = Duration::ZERO;
        // An attacker retrying the moment each block lifts, for an hour.
        let mut at = now;
        while at < now + Duration::from_secs(3_600) {
            match throttle.begin(Account::User("alice"), attacker, at) {
                Ok(attempt) => attempt.failed(),
                Err(Blocked(wait)) => {
                    longest = longest.max(wait);
                    at += wait;
                }
            }
        }
        // One drain step of the account bucket: 60 s / 4.
        assert!(longest <= Duration::from_secs(15), "{longest:?}");
        assert!(longest >= Duration::from_secs(14), "{longest:?}");
    }

    #[test]
    fn failures_across_accounts_block_the_address() {
        let throttle = Throttle::new(LIMITS);
        let attacker = ip("2001:db8:1:2::5");
        let now = Instant::now();
        for index in 0..10 {
            fail(
                &throttle,
                Account::User(&format!("guess-{index}")),
                attacker,
                now,
            );
        }
        assert!(is_blocked(&throttle, Account::User("fresh"), attacker, now));
        assert!(
            is_blocked(
                &throttle,
                Account::User("fresh"),
                ip("2001:db8:1:2::99"),
                now
            ),
            "the same /64"
        );
        assert!(!is_blocked(
            &throttle,
            Account::User("fresh"),
            ip("2001:db8:1:3::5"),
            now
        ));
    }

    #[test]
    fn success_clears_the_account_but_not_the_address() {
        let throttle = Throttle::new(LIMITS);
        let here = ip("192.0.2.1");
        let app = Account::Client("app");
        let now = Instant::now();
        for _ in 0..3 {
            fail(&throttle, app, here, now);
        }
        throttle.begin(app, here, now).expect("allowed").succeeded();
        // Had the account kept its 3 failures, a fourth would block it.
        fail(&throttle, app, here, now);
        let attempt = throttle.begin(app, here, now).expect("allowed");
        assert_eq!(attempt.delay(), Duration::ZERO);
        attempt.succeeded();
        // 3 + 1 failures at this address so far (successes give theirs back).
        for index in 0..6 {
            if index == 5 {
                throttle.begin(app, here, now).expect("allowed").succeeded();
            }
            fail(&throttle, Account::Client(&format!("x{index}")), here, now);
        }
        assert!(
            is_blocked(&throttle, Account::Client("y"), here, now),
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
            fail(
                &throttle,
                Account::Client("c"),
                ip,
                start + Duration::from_millis(u64::from(index)),
            );
        }
        let buckets = throttle.buckets.lock().expect("lock").len();
        assert!(buckets <= MAX_BUCKETS, "{buckets}");
    }
}
