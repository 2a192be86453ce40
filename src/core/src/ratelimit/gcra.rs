//! The generic cell rate algorithm: a token bucket kept as one number, the
//! theoretical arrival time (TAT) of the next request. One `u64` per key is
//! what makes a compare-and-swap update of shared data cheap.
//!
//! A rate of `limit` per `window` admits one request every `T = window / limit`;
//! `burst` requests may arrive at once. A request at `now` is admitted when
//! `max(tat, now) + T - burst * T <= now`, and then moves the TAT by `T`.

/// A rate: `limit` requests per `window_ms`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub limit: u64,
    pub window_ms: u64,
    pub burst: u64,
}

/// The verdict on one request, with what the `RateLimit` headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// The TAT to store (unchanged when denied).
    pub tat_ms: u64,
    /// Requests that could still be made right now.
    pub remaining: u64,
    /// Milliseconds until the bucket is full again.
    pub reset_ms: u64,
    /// Milliseconds until a request would be admitted (0 when allowed).
    pub retry_after_ms: u64,
}

impl Rate {
    /// Milliseconds per request, at least 1.
    fn interval_ms(&self) -> u64 {
        (self.window_ms / self.limit.max(1)).max(1)
    }

    fn tolerance_ms(&self) -> u64 {
        self.interval_ms().saturating_mul(self.burst.max(1))
    }

    /// Judges one request arriving at `now_ms` against the stored `tat_ms`
    /// (`None` for a key never seen or expired).
    pub fn check(&self, tat_ms: Option<u64>, now_ms: u64) -> Verdict {
        let t = self.interval_ms();
        let tolerance = self.tolerance_ms();
        let tat = tat_ms.unwrap_or(now_ms).max(now_ms);
        let new_tat = tat.saturating_add(t);
        let allow_at = new_tat.saturating_sub(tolerance);
        if allow_at <= now_ms {
            Verdict {
                allowed: true,
                tat_ms: new_tat,
                remaining: (now_ms.saturating_add(tolerance) - new_tat) / t,
                reset_ms: new_tat - now_ms,
                retry_after_ms: 0,
            }
        } else {
            Verdict {
                allowed: false,
                tat_ms: tat,
                remaining: 0,
                reset_ms: tat - now_ms,
                retry_after_ms: allow_at - now_ms,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rate: Rate, times: impl IntoIterator<Item = u64>) -> Vec<bool> {
        let mut tat = None;
        times
            .into_iter()
            .map(|now| {
                let v = rate.check(tat, now);
                if v.allowed {
                    tat = Some(v.tat_ms);
                }
                v.allowed
            })
            .collect()
    }

    #[test]
    fn burst_then_steady_rate() {
        let rate = Rate {
            limit: 10,
            window_ms: 1_000,
            burst: 3,
        };
        // Three at once, then one every 100 ms.
        assert_eq!(run(rate, [0, 0, 0, 0]), vec![true, true, true, false]);
        let allowed = run(rate, (0..2_000).step_by(10))
            .iter()
            .filter(|a| **a)
            .count();
        assert_eq!(
            allowed,
            3 + 19,
            "burst plus the rate over the remaining time"
        );
    }

    #[test]
    fn twice_the_rate_gets_the_rate() {
        let rate = Rate {
            limit: 20,
            window_ms: 1_000,
            burst: 1,
        };
        // 40 requests/s for 5 s.
        let allowed = run(rate, (0..5_000).step_by(25))
            .iter()
            .filter(|a| **a)
            .count();
        assert_eq!(allowed, 100);
    }

    #[test]
    fn headers_information() {
        let rate = Rate {
            limit: 5,
            window_ms: 10_000,
            burst: 5,
        };
        let v = rate.check(None, 0);
        assert!(v.allowed);
        assert_eq!((v.remaining, v.reset_ms, v.retry_after_ms), (4, 2_000, 0));
        let mut tat = None;
        for _ in 0..5 {
            tat = Some(rate.check(tat, 0).tat_ms);
        }
        let v = rate.check(tat, 0);
        assert!(!v.allowed);
        assert_eq!(v.remaining, 0);
        assert_eq!(v.retry_after_ms, 2_000, "one slot frees after T");
        assert_eq!(v.reset_ms, 10_000);
        assert!(
            rate.check(tat, 2_000).allowed,
            "and it recovers after the wait"
        );
    }

    #[test]
    fn idle_keys_start_fresh() {
        let rate = Rate {
            limit: 1,
            window_ms: 1_000,
            burst: 1,
        };
        let v = rate.check(Some(500), 10_000);
        assert!(v.allowed);
        assert_eq!(v.tat_ms, 11_000);
    }

    /// At the configuration's limits (limit and burst up to 10^9, window up
    /// to a year) nothing overflows: debug builds would trap.
    #[test]
    fn configured_extremes_do_not_overflow() {
        let year = 366 * 86_400_000;
        let rate = Rate {
            limit: 1_000_000_000,
            window_ms: 1,
            burst: 1_000_000_000,
        };
        assert!(rate.check(Some(u64::MAX / 2), u64::MAX / 2).allowed);
        let rate = Rate {
            limit: 1,
            window_ms: year,
            burst: 1,
        };
        let v = rate.check(None, 5);
        assert!(v.allowed);
        assert!(!rate.check(Some(v.tat_ms), 6).allowed);
        let rate = Rate {
            limit: 1_000_000_000,
            window_ms: year,
            burst: 1_000_000_000,
        };
        assert!(rate.check(None, 0).allowed);
    }
}
