//! Brute-force protection: failed authentications are counted per client IP;
//! past `max_failures` within `window`, the IP is locked out for `lockout`,
//! and its requests get `429` before any token is decoded or verified. That
//! also keeps floods of invalid tokens cheap.

use super::gcra::Rate;
use super::table::{key_hash, Churn, Entry, SlotTable};
use crate::host::SharedData;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BruteForce {
    pub max_failures: u64,
    pub window_ms: u64,
    pub lockout_ms: u64,
}

impl BruteForce {
    fn hash(ip: &str) -> u64 {
        key_hash(&format!("bf\0{ip}"))
    }

    /// Milliseconds left on this IP's lock-out, if it is locked out.
    pub fn locked_for(
        &self,
        table: &SlotTable,
        shared: &dyn SharedData,
        ip: &str,
        now_ms: u64,
    ) -> Option<u64> {
        let entry = table.read(shared, Self::hash(ip), now_ms)?;
        (entry.b > now_ms).then(|| entry.b - now_ms)
    }

    /// Counts one failed authentication. Returns true when this failure
    /// started a lock-out: the `max_failures`-th within the window does (it is
    /// still answered; the requests after it are locked out).
    pub fn record_failure(
        &self,
        table: &SlotTable,
        shared: &dyn SharedData,
        ip: &str,
        now_ms: u64,
        churn: &mut Churn,
    ) -> bool {
        let rate = Rate {
            limit: self.max_failures,
            window_ms: self.window_ms,
            burst: self.max_failures,
        };
        let hash = Self::hash(ip);
        let result = table.update(shared, hash, now_ms, |entry| {
            let locked_until = entry.map_or(0, |e| e.b);
            let verdict = rate.check(entry.map(|e| e.a), now_ms);
            let exhausted = !verdict.allowed || verdict.remaining == 0;
            let (tat, lock) = if exhausted {
                (verdict.tat_ms, now_ms + self.lockout_ms)
            } else {
                (verdict.tat_ms, locked_until)
            };
            let next = Entry {
                hash,
                a: tat,
                b: lock,
                expires_ms: tat.max(lock).max(now_ms + 1),
            };
            (Some(next), exhausted && locked_until <= now_ms)
        });
        match result {
            Ok((started, c)) => {
                churn.entries_delta += c.entries_delta;
                churn.evicted += c.evicted;
                started
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::fakes::FakeShared;

    #[test]
    fn locks_out_after_max_failures_then_expires() {
        let s = FakeShared::default();
        let t = SlotTable {
            slots: 8,
            entries_per_slot: 8,
        };
        let bf = BruteForce {
            max_failures: 3,
            window_ms: 60_000,
            lockout_ms: 30_000,
        };
        let mut churn = Churn::default();
        for _ in 0..2 {
            assert!(!bf.record_failure(&t, &s, "10.0.0.1", 0, &mut churn));
        }
        assert_eq!(
            bf.locked_for(&t, &s, "10.0.0.1", 0),
            None,
            "two failures are tolerated"
        );
        assert!(
            bf.record_failure(&t, &s, "10.0.0.1", 0, &mut churn),
            "the third (max_failures) locks out"
        );
        assert_eq!(bf.locked_for(&t, &s, "10.0.0.1", 1_000), Some(29_000));
        assert_eq!(
            bf.locked_for(&t, &s, "10.0.0.2", 1_000),
            None,
            "other IPs are unaffected"
        );
        assert_eq!(
            bf.locked_for(&t, &s, "10.0.0.1", 30_000),
            None,
            "the lock-out ends"
        );
        assert!(churn.entries_delta >= 1);
    }
}
