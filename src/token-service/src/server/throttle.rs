//! Brute-force protection for client and user authentication (`/token`, `/revoke`,
//! `/introspect` and the login form).
//!
//! Failed authentications fill two leaky buckets: one for the account (client id or
//! username) *at* the client address, one for the address alone. Each bucket holds up
//! to its limit and drains completely over the window. Past half of a limit, attempts
//! under that key are delayed (250 ms, doubling, at most 4 s); at the limit they are
//! refused with a retry time, before any password hash is computed.
//!
//! Checking and counting are one step: [`Throttle::begin`] admits an attempt only if
//! the failures so far *plus the attempts still being checked* stay below the limit,
//! and holds its place until it resolves, as a failure or as a success. An attempt
//! that would not fit waits for one in flight to resolve, then is decided again: so
//! however many guesses arrive at once, at most the limit of them are ever checked and
//! the rest get 429, while many concurrent requests with good credentials all go
//! through (each success empties the account's bucket). An attempt dropped
//! unresolved (an error, a cancelled request) counts as a failure.
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
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;

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
    /// A user's one-time code or passkey, by user id: counted apart from their
    /// password, so that a known password cannot reset the count of wrong codes.
    SecondFactor(&'a str),
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

/// An attempt the throttle let through. It holds a place in its buckets until it is
/// resolved; dropped unresolved, it counts as a failure.
#[must_use = "an attempt counts as failed unless `succeeded` is called"]
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    keys: [(Key, u32); 2],
    started: Instant,
    delay: Duration,
    resolved: bool,
}

impl Attempt<'_> {
    /// How long to wait before verifying: attempts past half a limit are slowed down.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// The credentials held: empties the account's bucket at that address. The
    /// address's bucket keeps its failures draining at their pace, so that one valid
    /// credential does not launder failures on other accounts.
    pub fn succeeded(mut self) {
        self.resolve(true);
    }

    /// The credentials were wrong: one more failure in each bucket.
    pub fn failed(mut self) {
        self.resolve(false);
    }

    fn resolve(&mut self, success: bool) {
        self.resolved = true;
        {
            let mut buckets = self.throttle.lock();
            let [(account, account_limit), (address, address_limit)] = self.keys;
            for (key, limit) in [(account, account_limit), (address, address_limit)] {
                let Some(bucket) = buckets.get_mut(&key) else {
                    continue;
                };
                bucket.pending = bucket.pending.saturating_sub(1);
                if success {
                    if key == account {
                        bucket.level = 0.0;
                    }
                } else {
                    let drain = self.throttle.drain_per_sec(limit);
                    bucket.level = bucket.level_at(self.started, drain) + 1.0;
                    bucket.updated = bucket.updated.max(self.started);
                }
            }
        }
        self.throttle.resolved.notify_waiters();
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.resolved {
            self.resolve(false);
        }
    }
}

/// Whether an attempt may start now.
enum Admission<'a> {
    Go(Attempt<'a>),
    /// Over a limit: failures alone fill a bucket.
    Blocked(Blocked),
    /// Failures and attempts in flight fill a bucket: wait for one to resolve.
    Busy,
}

pub struct Throttle {
    limits: Limits,
    buckets: Mutex<HashMap<Key, Bucket>>,
    /// Signalled whenever an attempt resolves, for the attempts waiting on one.
    resolved: Notify,
}

/// Accounts are hashed: bounded memory per key whatever the client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Account([u8; 16], IpAddr),
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures not drained yet at `updated`.
    level: f64,
    updated: Instant,
    /// Attempts admitted and not yet resolved.
    pending: u32,
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
            resolved: Notify::new(),
        }
    }

    /// Admits an attempt by `account` from `ip`, after waiting for attempts in flight
    /// if they and the failures so far fill a bucket; or refuses it, counting nothing.
    pub async fn begin(&self, account: Account<'_>, ip: IpAddr) -> Result<Attempt<'_>, Blocked> {
        let keys = self.keys(account, ip);
        loop {
            // Registered before deciding, so that no resolution in between is missed.
            let resolved = self.resolved.notified();
            match self.admit(keys, Instant::now()) {
                Admission::Go(attempt) => return Ok(attempt),
                Admission::Blocked(blocked) => return Err(blocked),
                Admission::Busy => resolved.await,
            }
        }
    }

    /// The decision for an attempt under `keys` at `now`, in one step under the lock.
    fn admit(&self, keys: [(Key, u32); 2], now: Instant) -> Admission<'_> {
        let mut buckets = self.lock();
        let mut delay = Duration::ZERO;
        let mut blocked: Option<Duration> = None;
        let mut busy = false;
        for (key, limit) in keys {
            let drain = self.drain_per_sec(limit);
            let (level, pending) = buckets.get(&key).map_or((0.0, 0), |bucket| {
                (bucket.level_at(now, drain), bucket.pending)
            });
            let allowed = f64::from(limit - 1);
            if level > allowed {
                let wait = Duration::from_secs_f64((level - allowed) / drain);
                blocked = Some(blocked.map_or(wait, |other| other.max(wait)));
            } else if level + f64::from(pending) > allowed {
                busy = true;
            } else {
                delay = delay.max(delay_for(level, limit));
            }
        }
        if let Some(wait) = blocked {
            return Admission::Blocked(Blocked(wait));
        }
        if busy {
            return Admission::Busy;
        }
        for (key, _) in keys {
            if !buckets.contains_key(&key) && buckets.len() >= MAX_BUCKETS {
                evict(&mut buckets, now, self.limits.window);
            }
            buckets
                .entry(key)
                .or_insert(Bucket {
                    level: 0.0,
                    updated: now,
                    pending: 0,
                })
                .pending += 1;
        }
        Admission::Go(Attempt {
            throttle: self,
            keys,
            started: now,
            delay,
            resolved: false,
        })
    }

    fn keys(&self, account: Account<'_>, ip: IpAddr) -> [(Key, u32); 2] {
        let address = address_key(ip);
        [
            (account_key(account, address), self.limits.account_failures),
            (Key::Address(address), self.limits.address_failures),
        ]
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Bucket>> {
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
        Account::SecondFactor(user_id) => ("second-factor", user_id),
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
    buckets.retain(|_, bucket| {
        bucket.pending > 0 || now.saturating_duration_since(bucket.updated) < window
    });
    if buckets.len() >= MAX_BUCKETS {
        let mut updated: Vec<Instant> = buckets.values().map(|bucket| bucket.updated).collect();
        let cutoff_index = updated.len() / 8;
        let (_, cutoff, _) = updated.select_nth_unstable(cutoff_index);
        let cutoff = *cutoff;
        buckets.retain(|_, bucket| bucket.pending > 0 || bucket.updated > cutoff);
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

    /// [`Throttle::begin`] at `now`, with no attempt in flight.
    fn begin<'a>(
        throttle: &'a Throttle,
        account: Account<'_>,
        ip: IpAddr,
        now: Instant,
    ) -> Result<Attempt<'a>, Blocked> {
        match throttle.admit(throttle.keys(account, ip), now) {
            Admission::Go(attempt) => Ok(attempt),
            Admission::Blocked(blocked) => Err(blocked),
            Admission::Busy => panic!("busy with no attempt in flight"),
        }
    }

    /// A failed attempt; returns the delay it was given.
    fn fail(throttle: &Throttle, account: Account<'_>, ip: IpAddr, now: Instant) -> Duration {
        let attempt = begin(throttle, account, ip, now).expect("not blocked");
        let delay = attempt.delay();
        attempt.failed();
        delay
    }

    fn is_blocked(throttle: &Throttle, account: Account<'_>, ip: IpAddr, now: Instant) -> bool {
        begin(throttle, account, ip, now).is_err()
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
        match begin(&throttle, target, attacker, now) {
            Err(blocked) => assert_eq!(blocked.retry_after_secs(), 15),
            Ok(_) => panic!("not blocked"),
        }
        begin(&throttle, target, attacker, now + Duration::from_secs(16))
            .expect("one failure drained")
            .succeeded();

        // The same client from elsewhere, and another client here, are unaffected.
        let fresh = |account, ip| {
            let attempt = begin(&throttle, account, ip, now).expect("admitted");
            let delay = attempt.delay();
            attempt.succeeded();
            delay
        };
        assert_eq!(fresh(target, ip("198.51.100.7")), Duration::ZERO);
        assert_eq!(fresh(Account::Client("other"), attacker), Duration::ZERO);
        // A user named like the client is another account.
        assert_eq!(fresh(Account::User("mobile-app"), attacker), Duration::ZERO);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_guesses_never_pass_the_limit() {
        // Regression: checking and counting were two steps, so every one of many
        // simultaneous guesses passed the check before any was counted.
        let throttle = std::sync::Arc::new(Throttle::new(LIMITS));
        let attacker = ip("203.0.113.5");
        let checked = std::sync::Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (throttle, checked) = (throttle.clone(), checked.clone());
                tokio::spawn(async move {
                    let attempt = throttle.begin(Account::User("alice"), attacker).await?;
                    checked.fetch_add(1, Ordering::SeqCst);
                    // Held while "hashing", as a request would.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    attempt.failed();
                    Ok::<_, Blocked>(())
                })
            })
            .collect();
        let mut refused = 0;
        for task in tasks {
            if task.await.expect("task").is_err() {
                refused += 1;
            }
        }
        assert_eq!((checked.load(Ordering::SeqCst), refused), (4, 46));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_good_credentials_all_go_through() {
        let throttle = std::sync::Arc::new(Throttle::new(LIMITS));
        let service = ip("192.0.2.8");
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let throttle = throttle.clone();
                tokio::spawn(async move {
                    let attempt = throttle
                        .begin(Account::Client("batch-job"), service)
                        .await?;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    attempt.succeeded();
                    Ok::<_, Blocked>(())
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task").expect("admitted");
        }
    }

    #[test]
    fn an_attempt_dropped_unresolved_counts_as_a_failure() {
        let throttle = Throttle::new(LIMITS);
        let here = ip("192.0.2.1");
        let now = Instant::now();
        for _ in 0..4 {
            drop(begin(&throttle, Account::Client("app"), here, now));
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
            match begin(&throttle, Account::User("alice"), attacker, at) {
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
        begin(&throttle, app, here, now)
            .expect("allowed")
            .succeeded();
        // Had the account kept its 3 failures, a fourth would block it.
        fail(&throttle, app, here, now);
        let attempt = begin(&throttle, app, here, now).expect("allowed");
        assert_eq!(attempt.delay(), Duration::ZERO);
        attempt.succeeded();
        // 3 + 1 failures at this address so far (successes add none).
        for index in 0..6 {
            if index == 5 {
                begin(&throttle, app, here, now)
                    .expect("allowed")
                    .succeeded();
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
