//! The service's counters, served at `GET /metrics` in the Prometheus text format
//! (exposition format 0.0.4).
//!
//! A handful of counters and three gauges do not need a metrics crate: the encoder is
//! the few lines of [`Metrics::render`]. Label values come from a closed set (route
//! templates, grant types, outcomes), never from request input, so the series stay
//! few. The counters are process-wide, like the process they describe.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};

use crate::crypto::secrets::QueueDepth;

const PREFIX: &str = "tollgate_token_service";

/// The process's counters.
pub static METRICS: Metrics = Metrics::new();

/// What a refused authentication attempt was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Throttled {
    Client,
    User,
}

pub struct Metrics {
    /// (endpoint, status) -> requests.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// grant type -> tokens issued.
    tokens_issued: Mutex<BTreeMap<&'static str, u64>>,
    /// Authentication attempts refused with 429, by account kind.
    throttled: Mutex<BTreeMap<Throttled, u64>>,
    /// `succeeded` / `failed` -> sign-ins at /authorize.
    sign_ins: Mutex<BTreeMap<&'static str, u64>>,
    refresh_token_reuse: Mutex<u64>,
    code_reuse: Mutex<u64>,
}

impl Metrics {
    pub const fn new() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            tokens_issued: Mutex::new(BTreeMap::new()),
            throttled: Mutex::new(BTreeMap::new()),
            sign_ins: Mutex::new(BTreeMap::new()),
            refresh_token_reuse: Mutex::new(0),
            code_reuse: Mutex::new(0),
        }
    }

    /// A request answered: `endpoint` is its route template (`/token`,
    /// `/admin/api-keys/{id}`), or `other` for none.
    pub fn request(&self, endpoint: &'static str, status: u16) {
        bump(&self.requests, (endpoint, status));
    }

    pub fn token_issued(&self, grant_type: &'static str) {
        bump(&self.tokens_issued, grant_type);
    }

    pub fn throttled(&self, account: Throttled) {
        bump(&self.throttled, account);
    }

    pub fn sign_in(&self, succeeded: bool) {
        bump(
            &self.sign_ins,
            if succeeded { "succeeded" } else { "failed" },
        );
    }

    pub fn refresh_token_reused(&self) {
        *self
            .refresh_token_reuse
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
    }

    pub fn code_reused(&self) {
        *self
            .code_reuse
            .lock()
            .unwrap_or_else(PoisonError::into_inner) += 1;
    }

    /// Every metric in the text format, with the hash queue as it is now.
    pub fn render(&self, hash_queue: QueueDepth) -> String {
        let mut out = String::new();
        family(
            &mut out,
            "requests_total",
            "counter",
            "HTTP requests answered, by endpoint (route template) and status.",
        );
        for ((endpoint, status), count) in snapshot(&self.requests) {
            sample(
                &mut out,
                "requests_total",
                &[("endpoint", endpoint), ("status", &status.to_string())],
                count,
            );
        }
        family(
            &mut out,
            "tokens_issued_total",
            "counter",
            "Access tokens issued, by grant type.",
        );
        for (grant_type, count) in snapshot(&self.tokens_issued) {
            sample(
                &mut out,
                "tokens_issued_total",
                &[("grant_type", grant_type)],
                count,
            );
        }
        family(
            &mut out,
            "throttled_total",
            "counter",
            "Authentication attempts refused with 429 by the brute-force throttle, by account kind.",
        );
        for (account, count) in snapshot(&self.throttled) {
            let account = match account {
                Throttled::Client => "client",
                Throttled::User => "user",
            };
            sample(&mut out, "throttled_total", &[("account", account)], count);
        }
        family(
            &mut out,
            "sign_ins_total",
            "counter",
            "Password checks at /authorize, by outcome.",
        );
        for (outcome, count) in snapshot(&self.sign_ins) {
            sample(&mut out, "sign_ins_total", &[("outcome", outcome)], count);
        }
        let single = |out: &mut String, name: &str, help: &str, value: u64| {
            family(out, name, "counter", help);
            sample(out, name, &[], value);
        };
        single(
            &mut out,
            "refresh_token_reuse_total",
            "Rotated refresh tokens presented again (certain replay): each revokes its grant.",
            *self
                .refresh_token_reuse
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        single(
            &mut out,
            "code_reuse_total",
            "Authorization codes presented again: each revokes what the code produced.",
            *self
                .code_reuse
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let gauge = |out: &mut String, name: &str, help: &str, value: usize| {
            family(out, name, "gauge", help);
            sample(out, name, &[], value as u64);
        };
        gauge(
            &mut out,
            "hash_queue_waiting",
            "Password and client-secret checks waiting for an Argon2 slot.",
            hash_queue.waiting,
        );
        gauge(
            &mut out,
            "hash_queue_in_flight",
            "Argon2 checks running now.",
            hash_queue.in_flight,
        );
        gauge(
            &mut out,
            "hash_queue_slots",
            "Argon2 checks that may run at once.",
            hash_queue.slots,
        );
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    *map.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(key)
        .or_insert(0) += 1;
}

fn snapshot<K: Ord + Copy>(map: &Mutex<BTreeMap<K, u64>>) -> Vec<(K, u64)> {
    map.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(key, count)| (*key, *count))
        .collect()
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {PREFIX}_{name} {help}");
    let _ = writeln!(out, "# TYPE {PREFIX}_{name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    let _ = write!(out, "{PREFIX}_{name}");
    if !labels.is_empty() {
        let labels: Vec<String> = labels
            .iter()
            .map(|(label, value)| format!("{label}=\"{}\"", escape(value)))
            .collect();
        let _ = write!(out, "{{{}}}", labels.join(","));
    }
    let _ = writeln!(out, " {value}");
}

/// Label values escape `\`, `"` and newlines (exposition format 0.0.4).
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_text_format() {
        let metrics = Metrics::new();
        metrics.request("/token", 200);
        metrics.request("/token", 200);
        metrics.request("/admin/api-keys/{id}", 404);
        metrics.token_issued("client_credentials");
        metrics.throttled(Throttled::User);
        metrics.refresh_token_reused();
        let text = metrics.render(QueueDepth {
            waiting: 3,
            in_flight: 2,
            slots: 2,
        });
        for line in [
            "# TYPE tollgate_token_service_requests_total counter",
            r#"tollgate_token_service_requests_total{endpoint="/token",status="200"} 2"#,
            r#"tollgate_token_service_requests_total{endpoint="/admin/api-keys/{id}",status="404"} 1"#,
            r#"tollgate_token_service_tokens_issued_total{grant_type="client_credentials"} 1"#,
            r#"tollgate_token_service_throttled_total{account="user"} 1"#,
            "tollgate_token_service_refresh_token_reuse_total 1",
            "tollgate_token_service_code_reuse_total 0",
            "# TYPE tollgate_token_service_hash_queue_waiting gauge",
            "tollgate_token_service_hash_queue_waiting 3",
            "tollgate_token_service_hash_queue_in_flight 2",
            "tollgate_token_service_hash_queue_slots 2",
        ] {
            assert!(text.lines().any(|got| got == line), "{line}\n{text}");
        }
        assert!(text.ends_with('\n'));
        assert_eq!(escape("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
    }
}
